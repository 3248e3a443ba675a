"""Which known features a decoder recovered, at any scale: FRR, each feature's best neuron and MCC.

`theory.metrics` defines these quantities. Up to `DENSE_MATCHING_ENTRIES` feature-neuron pairs they
are computed there, exactly as defined. Above (the paper's 65,536 features x 262,144 neurons holds
17 billion pairs), the cosines are computed here in torch, by tiles of `TILE` features x `TILE`
neurons (one large matmul each, into one reused buffer), and each feature keeps only its
`MATCHING_CANDIDATES` best neurons: the Hungarian matching runs on those candidates
(`theory.metrics.match_candidates`), widened until a full matching exists, which is exact whenever
the optimal matching uses only candidates. FRR and the best neuron are exact at every scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from theory.metrics import DENSE_MATCHING_ENTRIES, match_candidates, max_cosine, mcc, unit_rows

TILE = 4096
"""Features and neurons per tile of cosines (64 MiB of fp32). Square tiles keep both sides of each
product large: the projections of 4096 samples (d = 102) onto 262,144 neurons took 1.65 s computed
by blocks of 4096 neurons, 3.58 s as one plain matmul (`gba bench`, paper_scale record)."""
MATCHING_CANDIDATES = 8
"""Neurons first kept per feature for the matching, doubled until a full matching exists: a short
top-k adds little to a tile's matmul, and a trained SAE's optimal matching uses a feature's best few."""


@dataclass
class Recovery:
    """Each true feature's best neuron and the decoder's MCC."""

    best_cosine: np.ndarray
    """Each feature's largest cosine with a decoder row."""
    best_neuron: np.ndarray
    """The neuron attaining it."""
    mcc: float
    """Mean cosine of the one-to-one matching of the smaller set into the larger."""

    def frr(self, threshold: float) -> float:
        """FRR(threshold): the share of features whose best neuron reaches the cosine `threshold`."""
        return float(np.mean(self.best_cosine >= threshold))


def top_cosines(targets: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit row of `targets`: its `k` largest cosines with the unit rows of `candidates`, and
    which rows attain them (largest first)."""
    k = min(k, candidates.shape[0])
    values = torch.empty(targets.shape[0], k, device=targets.device)
    indices = torch.empty(targets.shape[0], k, dtype=torch.int64, device=targets.device)
    tile = None
    for first in range(0, targets.shape[0], TILE):
        rows = targets[first : first + TILE]
        best_values = best_indices = None
        for start in range(0, candidates.shape[0], TILE):
            columns = candidates[start : start + TILE]
            if tile is None or tile.shape != (rows.shape[0], columns.shape[0]):
                tile = rows @ columns.T
            else:
                torch.matmul(rows, columns.T, out=tile)
            if best_values is None:
                top = tile.topk(min(k, tile.shape[1]), dim=1)
                best_values, best_indices = top.values, top.indices + start
                continue
            changed = _rows_that_change(tile, best_values, k)
            if changed is None:
                continue
            if changed is ALL_ROWS:
                best_values, best_indices = _merge(best_values, best_indices, tile, start, k)
            else:
                best_values[changed], best_indices[changed] = _merge(best_values[changed], best_indices[changed], tile[changed], start, k)
        values[first : first + TILE], indices[first : first + TILE] = best_values, best_indices
    return values, indices


ALL_ROWS = "all rows"


def _rows_that_change(tile: torch.Tensor, best_values: torch.Tensor, k: int) -> torch.Tensor | str | None:
    """The rows whose top-k lists a new tile can change (None: no row), those with a cosine above their
    k-th best so far; ALL_ROWS when most rows change, so that the tile is merged whole without a copy.

    A row maximum costs a quarter of a top-k, and after the first few tiles most rows' lists hold
    cosines that no later tile beats.
    """
    if best_values.shape[1] < k:  # lists still shorter than k: every row takes the tile's entries
        return ALL_ROWS
    changed = torch.nonzero(tile.amax(dim=1) > best_values[:, -1]).squeeze(1)
    if changed.numel() == 0:
        return None
    return ALL_ROWS if 2 * changed.numel() > tile.shape[0] else changed


def _merge(best_values: torch.Tensor, best_indices: torch.Tensor, tile: torch.Tensor, start: int, k: int):
    """Top-k lists merged with a tile's cosines (its columns are candidates start, start + 1, ...)."""
    top = tile.topk(min(k, tile.shape[1]), dim=1)
    merged = torch.cat([best_values, top.values], dim=1).topk(min(k, best_values.shape[1] + top.values.shape[1]), dim=1)
    return merged.values, torch.cat([best_indices, top.indices + start], dim=1).gather(1, merged.indices)


def _unit_rows(features: np.ndarray, decoder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and decoder rows at unit length, on the decoder's device."""
    return (torch.from_numpy(unit_rows(features)).to(decoder.device),
            torch.from_numpy(unit_rows(decoder.float().cpu().numpy())).to(decoder.device))


def best_cosines(features: np.ndarray, decoder: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each feature's largest cosine with a row of `decoder` (`theory.metrics.max_cosine` at any scale)."""
    decoder = torch.as_tensor(decoder).detach()
    if features.shape[0] * decoder.shape[0] <= DENSE_MATCHING_ENTRIES:
        return max_cosine(features, decoder.cpu().numpy())[0]
    unit_features, unit_neurons = _unit_rows(features, decoder)
    return top_cosines(unit_features, unit_neurons, 1)[0][:, 0].cpu().numpy()


def recovery(features: np.ndarray, decoder: torch.Tensor | np.ndarray) -> Recovery:
    """Each feature's best neuron and the MCC of `decoder`'s rows against the true `features` (rows of V)."""
    decoder = torch.as_tensor(decoder).detach()
    n, width = features.shape[0], decoder.shape[0]
    if n * width <= DENSE_MATCHING_ENTRIES:
        rows = decoder.cpu().numpy()
        best, best_neuron = max_cosine(features, rows)
        return Recovery(best, best_neuron, mcc(features, rows))
    unit_features, unit_neurons = _unit_rows(features, decoder)
    small, large = (unit_features, unit_neurons) if n <= width else (unit_neurons, unit_features)
    candidates = MATCHING_CANDIDATES
    while True:
        values, indices = top_cosines(small, large, candidates)
        matching = match_candidates(values.cpu().numpy(), indices.cpu().numpy(), large.shape[0])
        if matching is not None:
            break
        candidates *= 2  # no full matching among the candidates: widen the lists
    if n > width:  # the pass above was over neurons: each feature's best neuron takes its own pass
        values, indices = top_cosines(unit_features, unit_neurons, 1)
    matched_rows, matched_columns = (torch.from_numpy(part).to(decoder.device) for part in matching)
    matched = (small[matched_rows] * large[matched_columns]).sum(dim=1)
    return Recovery(values[:, 0].cpu().numpy(), indices[:, 0].cpu().numpy(), float(matched.mean()))
