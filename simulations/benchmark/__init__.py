"""The benchmark (`gba bench`): step, controller, sampler, stacked-grid, bf16 and SAELens timings."""
