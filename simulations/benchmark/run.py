"""How fast the library trains, measured against the floor of one dense matmul (`gba bench`).

Every step time is taken by the one training loop (`simulations.engine.train.train`) on pre-sampled
batches and set beside one dense encoder matmul (batch x d) @ (d x M) timed in the same run
(the floor: the pre-activations must be computed), and beside the machine's peak fp32 matmul
throughput. Timings are medians of repeats; on a shared machine they fluctuate, so the ratios
taken in the same run are the numbers to compare. Each measurement is one JSON record.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from simulations.benchmark.timing import machine, median_seconds
from simulations.engine.methods import METHODS
from simulations.engine.methods.base import Codes, Projections
from simulations.engine.methods.bias_adaptation import BiasAdaptationConfig
from simulations.engine.sae import SAEConfig, SparseAutoencoder, normalise
from simulations.engine.step import block_projections, dense_forward
from simulations.engine.train import TrainConfig, train
from theory.model import FeatureModel, SyntheticData

SHAPES = ((64, 4096), (256, 16384), (576, 16384))
"""(d, M) of the step-time measurements."""
BATCH = 4096


def peak_matmul_gflops(device, repeats: int) -> float:
    """fp32 GFLOP/s of a 2048 x 2048 x 2048 matmul: the machine's practical peak."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    return 2 * 2048**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def bench_method_config(name: str, width: int, model: FeatureModel):
    """The method as benchmarked: BA/GBA with the theory's targets (2f, and down to f/10 for GBA)."""
    f = model.feature_frequency
    if name == "ba":
        return BiasAdaptationConfig.single(2 * f, update_interval=2 * BATCH)
    if name == "gba":
        return BiasAdaptationConfig(highest_target=2 * f, lowest_target=f / 10, groups=10, update_interval=2 * BATCH)
    return METHODS[name]()


def settle_biases(sae, method, batches, config: BiasAdaptationConfig, device) -> None:
    """Bring BA/GBA biases to their steady state before timing: the controller alone, on frozen
    weights, with a faster decrease rate (0.5) so that it takes a few windows, not hundreds."""
    fast = dataclasses.replace(config, bias_decrease_rate=0.5).build(sae.width, device)
    with torch.no_grad():
        for _ in range(30):
            fast.update(dense_forward(sae, fast, normalise(next(batches))).codes)
        method.bias.copy_(fast.bias)


def settle_thresholds(sae, method, batch: torch.Tensor, l0: int) -> None:
    """Bring JumpReLU thresholds to a trained-like state before timing: each latent's threshold at
    the activation it exceeds on l0/width of the samples, so that L0 is about `l0` (TopK's k)."""
    with torch.no_grad():
        pre_activation = sae.project(normalise(batch)) + method.bias
        rank = batch.shape[0] - max(1, round(l0 * batch.shape[0] / sae.width))
        threshold = pre_activation.kthvalue(rank, dim=0).values
        method.log_threshold.copy_(threshold.clamp_min(1e-6).log())


def time_steps(sae, method, batches, steps: int, sparse: bool, autocast: bool = False) -> tuple[float, float]:
    """Median seconds of one training step (the loop's first step, always dense, is left out) and the last L0."""
    config = TrainConfig(
        steps=steps + 1, batch_size=BATCH, log_every=1, device=str(sae.weight.device.type),
        sparse_step=sparse, autocast_bf16=autocast,
    )
    history = train(sae, method, batches, config)
    durations = np.diff(history["seconds"].to_numpy())
    return float(np.median(durations)), float(history["l0"].iloc[-1])


def step_records(shapes, methods, repeats: int, device, peak: float, with_dense: bool) -> list[dict]:
    records = []
    for d, width in shapes:
        model = FeatureModel(n=width // 4, d=d, sparsity=8, coefficients="uniform", seed=0)
        data = SyntheticData(model)
        pool = [torch.from_numpy(data.batch(i, BATCH, seed=1).x).to(device) for i in range(4)]
        batches = itertools.cycle(pool)
        weight = SparseAutoencoder(SAEConfig(width=width), d, torch.Generator().manual_seed(0), device).weight.detach()
        matmul = lambda: pool[0] @ weight.T  # noqa: E731
        matmul_times = [median_seconds(matmul, repeats)]
        for name in methods:
            variants = [("sparse", True)] if name in ("ba", "gba") else [("default", True)]
            if with_dense and name in ("gba", "topk", "batchtopk", "jumprelu"):  # BA's dense step is GBA's
                variants.append(("dense", False))  # the reference step, for the sparse step's speed-up
            for variant, sparse in variants:
                sae = SparseAutoencoder(SAEConfig(width=width), d, torch.Generator().manual_seed(0), device)
                try:
                    config = bench_method_config(name, width, model)
                    method = config.build(width, device)
                    if isinstance(config, BiasAdaptationConfig):
                        settle_biases(sae, method, batches, config, device)
                    if name == "jumprelu":
                        settle_thresholds(sae, method, pool[0], METHODS["topk"]().k)
                    steps = repeats if variant != "dense" else max(2, repeats // 2)
                    step, l0 = time_steps(sae, method, batches, steps, sparse)
                except Exception as error:  # a baseline that cannot run at this shape is reported, not fatal
                    records.append({"kind": "step", "method": name, "variant": variant, "d": d, "width": width, "error": repr(error)})
                    continue
                matmul_times.append(median_seconds(matmul, repeats))
                records.append({"kind": "step", "method": name, "variant": variant, "d": d, "width": width, "batch": BATCH,
                                "step_seconds": step, "l0": l0})
        floor = statistics.median(matmul_times)
        for record in records:
            if record.get("d") == d and record.get("width") == width and "step_seconds" in record:
                dense_equivalent = 12 * BATCH * d * width / 1e9  # encoder, decoder and their backward, dense
                record.update(
                    encoder_matmul_seconds=floor,
                    ratio_to_matmul=record["step_seconds"] / floor,
                    matmul_gflops=2 * BATCH * d * width / floor / 1e9,
                    dense_equivalent_gflops=dense_equivalent / record["step_seconds"],
                    share_of_peak=dense_equivalent / record["step_seconds"] / peak,
                )
    return records


def controller_record(d: int, width: int, repeats: int, device, step_seconds: float | None) -> dict:
    """The controller's time per step (its statistics and its amortised update) and its memory."""
    model = FeatureModel(n=width // 4, d=d, sparsity=8, seed=0)
    config = bench_method_config("gba", width, model)
    method = config.build(width, device)
    projection = torch.randn(BATCH, width, device=device) * 0.1
    method.bias.fill_(-0.3)  # about 0.1 % of codes active, as at steady state
    controller = method.controller
    entries = method.support(Projections.of(projection))
    codes = Codes(method.code_values(entries.projections, entries.columns), entries.projections, entries.columns,
                  entries.rows, BATCH)

    def statistics_of_one_batch():
        """`BiasAdaptation.update` on a step's codes, its window never full: the statistics alone."""
        controller.samples = 0
        method.update(codes)

    record_seconds = median_seconds(statistics_of_one_batch, repeats)
    update_seconds = median_seconds(lambda: controller.update(method.bias.clone()), repeats)
    per_step = record_seconds + update_seconds * BATCH / config.resolved_update_interval()
    state_bytes = sum(t.numel() * t.element_size() for t in (controller.positive_counts, controller.largest))
    return {
        "kind": "controller", "method": "gba", "d": d, "width": width, "batch": BATCH,
        "controller_seconds_per_step": per_step,
        "share_of_step": per_step / step_seconds if step_seconds else None,
        "controller_bytes": state_bytes,
        "buffered_bytes": width * config.resolved_update_interval() * 4,
        "update_interval": config.resolved_update_interval(),
    }


def sampler_records(shapes, repeats: int) -> list[dict]:
    records = []
    for d, width in shapes:
        data = SyntheticData(FeatureModel(n=width // 4, d=d, sparsity=8, coefficients="uniform", seed=0))
        rng = np.random.default_rng(0)
        seconds = median_seconds(lambda: data.sample(16 * BATCH, rng), repeats)
        records.append({"kind": "sampler", "d": d, "n": width // 4, "s": 8, "samples_per_second": 16 * BATCH / seconds})
    return records


GRID_SHAPES = ((256, 48, 3, 1024, 1024), (64, 24, 2, 256, 512))
"""(n, d, s, width, batch) of the small grid points timed: `gba recover`'s default instance at
its default batch, and the scale of the `frontier` and `gba_sensitivity` grids."""


def grid_records(points: int, steps: int) -> list[dict]:
    """G small grid points of each `GRID_SHAPES`: two workers each training half of them as one
    stacked computation, against one run per point on the same two joblib workers (1 thread each)."""
    from joblib import Parallel, delayed

    from simulations.experiments.recover import RecoverConfig

    records = []
    with Parallel(n_jobs=2, backend="loky") as parallel:
        parallel(delayed(torch.set_num_threads)(1) for _ in range(2))  # start the workers and import torch first
        for n, d, sparsity, width, batch in GRID_SHAPES:
            configs = [
                RecoverConfig.from_settings({"n": n, "d": d, "s": sparsity, "width": width, "method": "ba", "target_frequency": "2f",
                                             "steps": steps, "batch_size": batch, "device": "cpu", "seed": seed, "eval_samples": 4096})
                for seed in range(points)
            ]
            halves = [list(part) for part in np.array_split(np.array(configs, dtype=object), 2)]
            started = time.perf_counter()
            together = [metrics for part in parallel(delayed(_batched_runs)(half) for half in halves) for metrics in part]
            batched_seconds = time.perf_counter() - started
            started = time.perf_counter()
            alone = parallel(delayed(_single_run)(config) for config in configs)
            joblib_seconds = time.perf_counter() - started
            records.append({
                "kind": "grid", "method": "ba", "points": points, "n": n, "d": d, "width": width, "batch": batch, "steps": steps,
                "batched_seconds": batched_seconds, "joblib_seconds": joblib_seconds, "speedup": joblib_seconds / batched_seconds,
                "max_frr_difference": max(abs(a["frr_0.9"] - b["frr_0.9"]) for a, b in zip(together, alone)), "device": "cpu",
            })
    return records


def _batched_runs(configs):
    from simulations.experiments.recover import run_stack

    return [result.metrics for result in run_stack(configs)]


def _single_run(config):
    from simulations.experiments.recover import run

    return run(config).metrics


def bf16_records(repeats: int, device, steps: int, quick: bool) -> list[dict]:
    """bf16 autocast: step time at (256, 16384) and the change of FRR and loss on a small recovery run."""
    from simulations.experiments.recover import RecoverConfig, run

    records = []
    settings = {"n": 256, "d": 48, "s": 3, "width": 1024, "method": "ba", "target_frequency": "2f", "steps": steps,
                "batch_size": 1024, "device": "cpu", "seed": 0, "eval_samples": 8192}
    results = {flag: run(RecoverConfig.from_settings({**settings, "autocast_bf16": flag})) for flag in (False, True)}
    records.append({
        "kind": "bf16_quality", "method": "ba", "n": 256, "d": 48, "width": 1024, "steps": steps,
        "frr_0.9_fp32": results[False].metrics["frr_0.9"], "frr_0.9_bf16": results[True].metrics["frr_0.9"],
        "final_loss_fp32": float(results[False].history["loss"].iloc[-1]),
        "final_loss_bf16": float(results[True].history["loss"].iloc[-1]),
    })
    d, width = 256, 16384
    model = FeatureModel(n=width // 4, d=d, sparsity=8, coefficients="uniform", seed=0)
    data = SyntheticData(model)
    batches = itertools.cycle([torch.from_numpy(data.batch(i, BATCH, seed=1).x).to(device) for i in range(4)])
    config = bench_method_config("gba", width, model)
    settled = config.build(width, device)
    settle_biases(SparseAutoencoder(SAEConfig(width=width), d, torch.Generator().manual_seed(0), device), settled, batches, config, device)
    for variant, sparse in (("sparse", True), ("dense", False))[: 1 if quick else 2]:
        times = {}
        for autocast in (False, True):
            sae = SparseAutoencoder(SAEConfig(width=width), d, torch.Generator().manual_seed(0), device)
            method = config.build(width, device)
            method.bias.copy_(settled.bias)
            times[autocast], _ = time_steps(sae, method, batches, repeats if sparse else max(2, repeats // 2), sparse, autocast)
        records.append({"kind": "bf16_speed", "method": "gba", "variant": variant, "d": d, "width": width, "batch": BATCH,
                        "step_seconds_fp32": times[False], "step_seconds_bf16": times[True], "speedup": times[False] / times[True]})
    return records


def saelens_records(shapes, repeats: int, device, architectures) -> list[dict]:
    """SAELens's training step (its TopK and standard L1 SAEs) on the same batches, beside our GBA step."""
    from simulations.benchmark.saelens import saelens_step_seconds  # needs the optional `bench` extra

    records = []
    for d, width in shapes:
        data = SyntheticData(FeatureModel(n=width // 4, d=d, sparsity=8, coefficients="uniform", seed=0))
        pool = [torch.from_numpy(data.batch(i, BATCH, seed=1).x).to(device) for i in range(4)]
        for architecture in architectures:
            seconds = saelens_step_seconds(architecture, d, width, pool, repeats)
            records.append({"kind": "saelens", "method": f"saelens-{architecture}", "d": d, "width": width, "batch": BATCH,
                            "step_seconds": seconds, "samples_per_second": BATCH / seconds})
    return records


def saelens_speedups(records: list[dict]) -> list[dict]:
    """Each SAELens record with our GBA step's and our same-kind baseline's samples/s at its shape, and their ratios."""
    ours = {(r["method"], r["d"], r["width"]): r["step_seconds"] for r in records
            if r.get("kind") == "step" and "step_seconds" in r and r.get("variant") != "dense"}
    counterpart = {"saelens-topk": "topk", "saelens-standard": "relu-l1"}
    for record in records:
        if record.get("kind") != "saelens" or "step_seconds" not in record:
            continue
        shape = (record["d"], record["width"])
        for label, method in (("gba", "gba"), ("same_method", counterpart.get(record["method"]))):
            if (method, *shape) in ours:
                record[f"{label}_samples_per_second"] = BATCH / ours[(method, *shape)]
                record[f"{label}_speedup"] = record["step_seconds"] / ours[(method, *shape)]
    return records


def busy_machine_records(steps: int) -> list[dict]:
    """`gba recover` on its default instance (`steps` steps, 1 CPU-bound thread per core) alone and
    beside a process that holds one core, started and stopped here; each run is a fresh process,
    as OpenMP reads its settings when torch loads."""
    command = [sys.executable, "-m", "simulations.commands.gba", "recover", "--quiet", "--steps", str(steps)]

    def seconds() -> float:
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started

    quiet = seconds()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = seconds()
    finally:
        hog.kill()
        hog.wait()
    return [{"kind": "busy_machine", "method": "ba", "steps": steps, "quiet_seconds": quiet, "busy_seconds": busy,
             "ratio": busy / quiet, "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}]


PAPER_SCALE = {"n": 65536, "d": 102, "s": 3, "width": 262144, "batch_size": 4096, "method": "ba",
               "target_frequency": "2.4f", "initial_bias": "calibrated", "eval_samples": 4096, "seed": 0}
"""The paper's headline scale (digest §5.1): n = 65,536 features, d = 102 (inside its recovery band),
M = 4n neurons, s = 3, BA at p = 2.4f, batch 4096, started sparse (calibrated biases)."""


def paper_scale_point(steps: int, settings: dict = PAPER_SCALE) -> dict:
    """One run at `settings`, timed by part, in this process: the start and `steps` training steps
    (the first step includes the calibration), the evaluation (FRR, best neurons, MCC, L0, EV,
    frequencies), the initial decoder's FRR, and the encoder matmul (batch x d) @ (d x M) timed
    afterwards on the same machine, plain and as the sparse step computes it (blocks of neurons); with the run's peak RSS (before that matmul)."""
    import resource

    from simulations.engine.recovery import best_cosines
    from simulations.experiments.recover import RecoverConfig, evaluate_run, prepare, torch_batches

    config = RecoverConfig.from_settings({**settings, "steps": steps, "log_every": steps, "device": "cpu"})
    data, sae, method, initial_decoder = prepare(config)
    batches = torch_batches(data, config.train.batch_size, config.seed, sae.weight.device)
    started = time.perf_counter()
    train(sae, method, batches, config.train)  # no features: the history's FRR is the evaluation's job here
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate_run(sae, method, data, config)
    evaluation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    best_cosines(data.features, initial_decoder)
    initial_frr_seconds = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # before the matmul's own (batch, M) output
    x, weight = next(batches), sae.weight.detach()
    matmul = median_seconds(lambda: x @ weight.T, 3)
    # The same products as the sparse step reads them: by blocks of neurons into one reused buffer.
    blocked = median_seconds(lambda: sum(1 for _ in block_projections(sae, x).neuron_blocks()), 3)
    return {
        "kind": "paper_scale", "method": config.method, "n": config.model.n, "d": config.model.d, "width": config.sae.width,
        "batch": config.train.batch_size, "steps": steps, "train_seconds": train_seconds,
        "encoder_matmul_seconds": matmul, "ratio_to_matmuls": train_seconds / (steps * matmul),
        "blocked_matmul_seconds": blocked, "ratio_to_blocked_matmuls": train_seconds / (steps * blocked),
        "evaluation_seconds": evaluation_seconds, "initial_frr_seconds": initial_frr_seconds,
        "eval_samples": config.eval_samples, "l0": metrics["l0"], "frr_0.9": metrics["frr_0.9"],
        "peak_rss_gib": peak_rss,
    }


def paper_scale_record(steps: int) -> dict:
    """`paper_scale_point` in a fresh process, so that its peak RSS is its own."""
    code = f"import json; from simulations.benchmark.run import paper_scale_point; print(json.dumps(paper_scale_point({steps})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        return {"kind": "paper_scale", "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_bench(quick: bool) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 3 if quick else 5
    shapes = SHAPES[:2] if quick else SHAPES
    methods = ["gba"] if quick else list(METHODS)
    about = machine()
    records = [{"kind": "machine", **about}]
    peak = peak_matmul_gflops(device, repeats)
    records.append({"kind": "peak", "device": device.type, "gflops": peak})
    steps = step_records(shapes, methods, repeats, device, peak, with_dense=not quick)
    records += steps
    for d, width in shapes:
        gba = [r for r in steps if r.get("method") == "gba" and r.get("variant") == "sparse" and r["d"] == d and "step_seconds" in r]
        records.append(controller_record(d, width, repeats, device, gba[0]["step_seconds"] if gba else None))
    records += sampler_records(shapes, repeats)
    records += grid_records(points=4 if quick else 8, steps=100 if quick else 300)
    records += bf16_records(repeats, device, steps=100 if quick else 400, quick=quick)
    records += busy_machine_records(steps=300 if quick else 1000)
    if not quick:
        records.append(paper_scale_record(steps=10))
    try:
        records += saelens_records(shapes[1:2] if quick else shapes, repeats, device, ("topk",) if quick else ("topk", "standard"))
    except ImportError as error:
        records.append({"kind": "saelens", "skipped": f"sae-lens is not installed ({error}); pip install -e '.[bench]'"})
    for record in records:
        record.setdefault("device", device.type)
    return saelens_speedups(records)


def table(records: list[dict]) -> str:
    """The records as aligned text, one block per kind."""
    lines = []
    for kind, group in itertools.groupby(records, key=lambda r: r["kind"]):
        group = list(group)
        keys = list(dict.fromkeys(k for r in group for k in r if k not in ("kind", "device")))
        lines.append(f"[{kind}]")
        lines.append("  ".join(f"{k:>14}" for k in keys))
        for r in group:
            cells = []
            for k in keys:
                value = r.get(k, "")
                cells.append(f"{value:>14.4g}" if isinstance(value, float) else f"{str(value):>14}")
            lines.append("  ".join(cells))
    return "\n".join(lines)
