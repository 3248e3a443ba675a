"""The one evaluator: what a trained SAE does on a stream of inputs and, when the true features
are known, which of them it recovered. `gba recover`, the grid and the LLM track all call it.

Built on `theory.metrics`: FRR, MCC and the best-neuron matching from the decoder rows,
reconstruction statistics (EV, normalised MSE, FVU) streamed over batches, dead fraction. Per
neuron it counts activations (and, on request, the moments behind the Z-score); for methods
with target frequencies (BA/GBA) it compares the realised frequencies with the targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from simulations.engine.methods.base import Method
from simulations.engine.sae import SparseAutoencoder, normalise
from simulations.engine.step import block_projections
from simulations.engine.recovery import recovery
from theory.metrics import ReconstructionStats, dead_fraction

MARGIN_SIGMAS = 4
"""A neuron is above its target when its frequency exceeds it by this many binomial standard
deviations of the evaluation sample (sampling noise alone exceeds 4 sigma about once in 30,000)."""


@dataclass
class Evaluation:
    """Scalar metrics, one row per neuron, and each true feature's best neuron (when features are known)."""

    metrics: dict
    """Scalar metrics (and `groups`: per-group summaries for methods with target frequencies)."""
    neurons: pd.DataFrame
    """Per neuron: group, frequency (and max activation, mean, Z-score when asked for)."""
    best_cosine: np.ndarray | None = None
    """Each true feature's largest cosine with a decoder row."""
    best_neuron: np.ndarray | None = None
    """The neuron attaining it."""


@torch.no_grad()
def evaluate(
    sae: SparseAutoencoder,
    method: Method,
    batches: Iterable[torch.Tensor],
    *,
    normalise_inputs: bool = True,
    features: np.ndarray | None = None,
    neuron_moments: bool = False,
) -> Evaluation:
    """Evaluate `sae` with `method`'s inference rule on `batches` (raw inputs on the SAE's device).

    The SAE sees each input scaled to unit norm when `normalise_inputs` (as in training); EV and
    normalised MSE are then measured on the unit-norm inputs, and FVU and MSE also in the inputs'
    own units (the reconstruction times the input's norm). With `features` (the true V), the
    decoder rows are matched to them. `neuron_moments` adds each neuron's mean, max and Z-score.
    """
    method.eval()
    width = sae.width
    unit_stats, raw_stats = ReconstructionStats(), ReconstructionStats()
    counts = torch.zeros(width, device=sae.weight.device)
    moments = torch.zeros(3, width, dtype=torch.float64)  # sum, sum of squares, max
    active_total, samples = 0.0, 0
    input_sum = torch.zeros(sae.d, dtype=torch.float64)
    for x in batches:
        unit = normalise(x) if normalise_inputs else x
        input_sum += unit.double().sum(dim=0).cpu()
        reconstruction, columns, values = _encode(sae, method, unit)
        unit_stats.update(unit.cpu().numpy(), reconstruction.cpu().numpy())
        if normalise_inputs:
            raw_stats.update(x.cpu().numpy(), (reconstruction * x.norm(dim=-1, keepdim=True)).cpu().numpy())
        counts += torch.bincount(columns, minlength=width)
        active_total += float(columns.numel())
        samples += x.shape[0]
        if neuron_moments:
            values, columns = values.double().cpu(), columns.cpu()
            moments[0].index_add_(0, columns, values)
            moments[1].index_add_(0, columns, values.pow(2))
            moments[2].scatter_reduce_(0, columns, values, "amax")
    frequency = (counts / samples).cpu()
    metrics = {}
    best = best_neuron = None
    if features is not None:
        found = recovery(features, sae.decoder_weight)
        best, best_neuron = found.best_cosine, found.best_neuron
        metrics.update({
            "frr_0.8": found.frr(0.8),
            "frr_0.9": found.frr(0.9),
            "mean_max_cosine": float(np.mean(best)),
            "mcc": found.mcc,
        })
    metrics.update({
        "l0": active_total / samples,
        "dead_fraction": dead_fraction(counts.cpu().numpy()),
        "explained_variance": unit_stats.explained_variance,
        "normalised_mse": unit_stats.normalised_mse,
        "mean_activation_frequency": float(frequency.mean()),
    })
    if normalise_inputs:
        metrics.update(fvu=raw_stats.fraction_of_variance_unexplained, mse=raw_stats.mse)
    # Where b_pre went: an untied SAE can move it far from the data (the inputs are unit norm).
    pre_bias, mean_input = sae.pre_bias.detach().double().cpu(), input_sum / samples
    norms = float(pre_bias.norm() * mean_input.norm())
    metrics["pre_bias_norm"] = float(pre_bias.norm())
    metrics["pre_bias_mean_cosine"] = float(pre_bias @ mean_input) / norms if norms > 0 else float("nan")
    if features is not None:
        # Whether b_pre has taken up a feature (it then fires in every reconstruction).
        unit_features = features / np.linalg.norm(features, axis=1, keepdims=True)
        norm = float(pre_bias.norm())
        metrics["pre_bias_feature_cosine"] = float((unit_features @ pre_bias.numpy()).max()) / norm if norm > 0 else float("nan")
    frequency64 = frequency.numpy().astype(np.float64)
    live = frequency64 > 0
    metrics["median_live_frequency"] = float(np.median(frequency64[live])) if live.any() else 0.0
    if best_neuron is not None:
        # The neurons that carry the features: the realised frequency to set beside f.
        metrics["matched_frequency"] = float(np.median(frequency64[best_neuron]))
    neurons = pd.DataFrame({"neuron": np.arange(width), "frequency": frequency.numpy()})
    targets = method.frequency_targets()
    neurons["group"] = targets.group_of_neuron.cpu().numpy() if targets is not None else 0
    if targets is not None:
        metrics.update(_target_metrics(targets, frequency, samples, best, best_neuron))
    if neuron_moments:
        mean = moments[0] / samples
        std = (moments[1] / samples - mean.pow(2)).clamp_min(0).sqrt()
        z_score = torch.where(std > 0, (moments[2] - mean) / std.clamp_min(1e-30), torch.zeros_like(std))
        neurons["max_activation"], neurons["mean_activation"], neurons["z_score"] = moments[2].numpy(), mean.numpy(), z_score.numpy()
    return Evaluation(metrics, neurons, best, best_neuron)


def _encode(sae: SparseAutoencoder, method: Method, unit: torch.Tensor):
    """The reconstruction of a batch and its non-zero codes (neuron and value of each).

    A batch whose (batch, width) projections fit in one block is encoded densely; a wider one
    from the method's support, read by blocks as in the sparse step, so that no (batch, width)
    matrix is ever held.
    """
    projections = block_projections(sae, unit - sae.pre_bias)
    if projections.in_one_block:
        codes = method.encode(sae.project(unit))
        rows, columns = codes.nonzero(as_tuple=True)
        return sae.decode(codes), columns, codes[rows, columns]
    entries = method.support(projections)
    values = method.code_values(entries.projections, entries.columns)
    nonzero = values != 0
    rows, columns, values = entries.rows[nonzero], entries.columns[nonzero], values[nonzero]
    decoded = torch.zeros_like(unit).index_add_(0, rows, values.unsqueeze(1) * sae.decoder_weight[columns])
    return decoded + sae.pre_bias, columns, values


def _target_metrics(targets, frequency: torch.Tensor, samples: int, best, best_neuron) -> dict:
    """Realised frequencies against the targets: per group, and the share above target overall."""
    group_of_neuron = targets.group_of_neuron.cpu()
    groups = []
    for k, target in enumerate(targets.targets):
        members = frequency[group_of_neuron == k]
        groups.append({
            "target_frequency": float(target),
            "mean_frequency": float(members.mean()),
            "max_frequency": float(members.max()),
            "fraction_above_target": float((members > target).float().mean()),
            "frequencies": members.tolist(),
        })
    out = {"groups": groups}
    if best_neuron is not None and len(groups) > 1:
        # Which groups carry the recovered features (best neuron at cosine >= 0.9).
        out["recovered_per_group"] = np.bincount(group_of_neuron.numpy()[best_neuron[best >= 0.9]], minlength=len(groups)).tolist()
    frequency, adjustable = frequency.numpy().astype(np.float64), targets.adjustable.cpu().numpy()
    target = targets.targets.double().numpy()[group_of_neuron.numpy()]
    limit = target + MARGIN_SIGMAS * np.sqrt(target / samples)
    out["fraction_above_target"] = float(np.mean(frequency[adjustable] > limit[adjustable])) if adjustable.any() else 0.0
    out["biases_in_range"] = bool(targets.in_range)
    out["controller_updates"] = int(targets.updates)
    out["fraction_at_clamp"] = float(1.0 - adjustable.mean())
    return out
