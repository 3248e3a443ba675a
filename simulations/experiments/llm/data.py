"""Reading an activation cache: the stored tensors of a split, and shuffled training batches.

Inputs are normalised as in the paper (each token's activation scaled to unit norm, Algorithm 1
"sample and normalize X_t"; the training loop does it). The scale is kept: `mean_norm` is the
average activation norm of the split, and every metric in model units multiplies the unit-norm
reconstruction back by the token's own norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from simulations.experiments.llm.activations import read_manifest
from theory.validation import ConfigError


@dataclass
class CachedSplit:
    """All activations of one split in memory, with their token ids."""

    activations: torch.Tensor
    """(tokens, d) float32, in the model's units."""
    token_ids: torch.Tensor
    """(sequences, context) int64: the sequences the activations came from."""
    manifest: dict
    """The cache's manifest (model, layer, site, context, drop_first, ...)."""

    @property
    def d(self) -> int:
        return self.activations.shape[1]

    @property
    def mean_norm(self) -> float:
        """Average L2 norm of a token's activation: the scale that unit-norm inputs divide out."""
        return float(self.activations.norm(dim=1).mean())


def load_split(folder: str | Path, split: str = "train", max_tokens: int | None = None) -> CachedSplit:
    """The activations of `split` ('train' or 'eval') of a cache folder (the first `max_tokens` when given)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or split not in manifest.get("splits", {}) or not manifest["splits"][split]["shards"]:
        raise ConfigError(f"cache: {folder} has no extracted {split!r} split; run gba llm extract first")
    activations, token_ids, total = [], [], 0
    for shard in manifest["splits"][split]["shards"]:
        tensors = load_file(str(folder / shard["file"]))
        activations.append(tensors["activations"].float())  # shards may store fp16
        token_ids.append(tensors["token_ids"])
        total += shard["tokens"]
        if max_tokens is not None and total >= max_tokens:
            break
    data = torch.cat(activations)
    if max_tokens is not None:
        data = data[:max_tokens]
    return CachedSplit(data, torch.cat(token_ids), manifest)


def shuffled_batches(data: torch.Tensor, batch_size: int, seed: int, start: int = 0, device="cpu"):
    """Endless batches of rows of `data`: epoch e visits the rows in a permutation drawn from (seed, e).

    Batch i depends only on (seed, i), so a resumed run starts at `start` and sees exactly the
    batches an uninterrupted run would. A partial last batch of an epoch is skipped.
    """
    per_epoch = data.shape[0] // batch_size
    if per_epoch == 0:
        raise ConfigError(f"batch_size: must be at most the number of cached tokens ({data.shape[0]}), got {batch_size}")
    epoch, order = None, None
    index = start
    while True:
        if index // per_epoch != epoch:
            epoch = index // per_epoch
            order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        position = (index % per_epoch) * batch_size
        yield data[order[position : position + batch_size]].to(device)
        index += 1
