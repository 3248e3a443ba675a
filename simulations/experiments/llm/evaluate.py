"""Metrics of SAEs trained on LM activations (digest §6.1, §9.6), on the held-out eval split.

Reconstruction and sparsity (the engine's evaluator, `simulations.engine.evaluate`): the normalised MSE E||x_hat - x||^2 / ||x||^2 (the paper's L2 loss on
unit-norm inputs), FVU and MSE in the model's units (the unit-norm reconstruction times the
token's norm), L0, fraction of neurons active (L0 / M), alive fraction (neurons that fire at least
once on the eval split), and per neuron: activation frequency, max activation and Z-score.

Z-score of a neuron: (max_t z_t - mean_t z_t) / std_t z_t over the eval tokens t, zeros included:
how many standard deviations its largest activation stands above its mean. The paper selects
neurons by "Z-score" (v1 §A.2) but its definition could not be obtained (digest §6.1); this one
is ours, chosen because it is a per-neuron selectivity statistic that, like the paper's (Fig. 6),
grows with the max activation.

Downstream: CE loss and KL divergence of the LM's next-token predictions with the SAE's
reconstruction spliced in at the site (positions after `drop_first`; the dropped ones keep their
clean activation), against the clean model and zero-ablation of the site;
CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean) (SAELens's "ce_loss_score").

Consistency across seeds (paper Fig. 5): for each ordered pair (A, B) of runs, the top alpha of
A's neurons (by max activation or by Z-score) and the share of them whose max cosine to B's
decoder rows (MCS, `theory.metrics.max_cosine_similarity`) exceeds each threshold; the table
averages over the pairs. Beside the paper's shares of the width, a fixed count of neurons is
selected too: at a CPU-scale width the top 0.05 % holds only a few neurons, so its shares move in
large steps.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from simulations.engine.evaluate import evaluate
from simulations.engine.progress import progress_bar
from simulations.engine.sae import normalise
from simulations.experiments.llm.activations import _output_tensor
from theory.metrics import max_cosine_similarity

ALPHAS = (0.003, 0.0005)
"""Shares of neurons selected for consistency (the paper's 0.3 % and 0.05 %)."""
SELECTED_COUNTS = (8,)
"""Numbers of neurons selected for consistency whatever the width."""
MCS_THRESHOLDS = (0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def encode_in_model_units(sae, method, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, reconstruction in the model's units) of raw activations x: the SAE sees x / ||x||."""
    norms = x.norm(dim=1, keepdim=True)
    codes = method.encode(sae.project(normalise(x)))
    return codes, sae.decode(codes) * norms


@torch.no_grad()
def reconstruction_metrics(sae, method, activations: torch.Tensor, batch_size: int = 4096) -> tuple[dict, pd.DataFrame]:
    """Scalar metrics and a per-neuron table (group, frequency, max activation, Z-score) on `activations`."""
    device = sae.weight.device
    batches = (activations[start : start + batch_size].to(device) for start in range(0, activations.shape[0], batch_size))
    evaluation = evaluate(sae, method, batches, normalise_inputs=True, neuron_moments=True)
    scalars = evaluation.metrics
    metrics = {
        "normalised_mse": scalars["normalised_mse"],
        "fvu": scalars["fvu"],
        "mse_model_units": scalars["mse"],
        "l0": scalars["l0"],
        "fraction_active": scalars["l0"] / sae.width,
        "alive_fraction": 1.0 - scalars["dead_fraction"],
        "eval_tokens": activations.shape[0],
    }
    return metrics, evaluation.neurons[["neuron", "group", "frequency", "max_activation", "z_score"]]


def frequency_histograms(neurons: pd.DataFrame, bins_per_decade: int = 4, lowest: float = 1e-6) -> pd.DataFrame:
    """Per group, counts of neurons by activation frequency on log-spaced bins (dead neurons in the first bin)."""
    decades = int(round(-math.log10(lowest)))
    edges = np.logspace(-decades, 0, decades * bins_per_decade + 1)
    rows = []
    for group, members in neurons.groupby("group"):
        frequency = members["frequency"].clip(lower=edges[0]).to_numpy()
        counts, _ = np.histogram(frequency, bins=edges)
        rows += [
            {"group": int(group), "low": float(low), "high": float(high), "neurons": int(count)}
            for low, high, count in zip(edges[:-1], edges[1:], counts)
        ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- spliced CE / KL

def _replace_output(output, replacement: torch.Tensor):
    return (replacement,) + tuple(output[1:]) if isinstance(output, tuple) else replacement


@torch.no_grad()
def spliced_losses(model, module, token_ids: torch.Tensor, saes: dict, drop_first: int, batch_size: int = 16,
                   progress: bool = False) -> pd.DataFrame:
    """CE and KL with each SAE's reconstruction spliced in at `module`, with the clean and zero-ablated model.

    `saes` maps a name to (sae, method). Returns one row per SAE: ce_clean, ce_zero, ce_sae,
    kl_sae, kl_zero (nats per predicted token) and ce_recovered. `progress` shows a bar over the
    batches of sequences (each runs the model once per SAE).
    """
    device = next(model.parameters()).device
    replacement = {"fn": None}

    def splice(_module, _inputs, output):
        if replacement["fn"] is None:
            return None
        x = _output_tensor(output)
        patched = x.clone()
        patched[:, drop_first:] = replacement["fn"](x[:, drop_first:])
        return _replace_output(output, patched)

    def logprobs(ids):
        return torch.log_softmax(model(input_ids=ids, use_cache=False).logits[:, drop_first:-1].float(), dim=-1)

    totals: dict[str, dict[str, float]] = {name: {"ce": 0.0, "kl": 0.0} for name in list(saes) + ["__clean__", "__zero__"]}
    predicted = 0
    handle = module.register_forward_hook(splice)
    try:
        starts = range(0, token_ids.shape[0], batch_size)
        for start in progress_bar(starts, enabled=progress, desc="spliced CE", unit="batches"):
            ids = token_ids[start : start + batch_size].to(device)
            targets = ids[:, drop_first + 1 :]
            predicted += targets.numel()
            replacement["fn"] = None
            clean = logprobs(ids)
            variants = {"__clean__": None, "__zero__": torch.zeros_like}
            variants.update({name: _reconstructor(sae, method) for name, (sae, method) in saes.items()})
            for name, fn in variants.items():
                replacement["fn"] = fn
                patched = clean if fn is None else logprobs(ids)
                totals[name]["ce"] += float(-patched.gather(-1, targets[..., None]).sum())
                totals[name]["kl"] += float((clean.exp() * (clean - patched)).sum())
    finally:
        handle.remove()
    ce_clean = totals["__clean__"]["ce"] / predicted
    ce_zero = totals["__zero__"]["ce"] / predicted
    rows = []
    for name in saes:
        ce = totals[name]["ce"] / predicted
        rows.append(
            {
                "run": name,
                "ce_clean": ce_clean,
                "ce_zero": ce_zero,
                "ce_sae": ce,
                "kl_sae": totals[name]["kl"] / predicted,
                "kl_zero": totals["__zero__"]["kl"] / predicted,
                "ce_recovered": (ce_zero - ce) / (ce_zero - ce_clean),
                "ce_tokens": predicted,
            }
        )
    return pd.DataFrame(rows)


def _reconstructor(sae, method):
    """Activations (batch, seq, d) in model units -> the SAE's reconstruction in model units."""

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        return encode_in_model_units(sae, method, flat)[1].reshape(x.shape).to(x.dtype)

    return reconstruct


# ---------------------------------------------------------------- consistency

def consistency(decoders: list[np.ndarray], neuron_tables: list[pd.DataFrame], alphas=ALPHAS, thresholds=MCS_THRESHOLDS,
                counts=SELECTED_COUNTS) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Share of the top-alpha neurons (and of the top `counts` neurons) whose MCS to another seed exceeds each
    threshold, averaged over ordered pairs.

    Returns the table (selection, by 'share' or 'count', alpha, selected, threshold, share) and, per
    run, each neuron's MCS to the other runs (the mean over them) for the Z-score scatter.
    """
    if len(decoders) < 2:
        raise ValueError("consistency needs at least two runs")
    runs = range(len(decoders))
    mcs = {(a, b): max_cosine_similarity(decoders[a], decoders[b]) for a in runs for b in runs if a != b}
    width = len(decoders[0])
    selections = [("share", alpha, max(1, math.ceil(alpha * width))) for alpha in alphas]
    selections += [("count", count / width, count) for count in counts if count <= width]
    rows = []
    for selection in ("max_activation", "z_score"):
        for by, alpha, count in selections:
            for threshold in thresholds:
                shares = []
                for (a, b), cosines in mcs.items():
                    top = np.argsort(-neuron_tables[a][selection].to_numpy(), kind="stable")[:count]
                    shares.append(float(np.mean(cosines[top] > threshold)))
                rows.append({"selection": selection, "by": by, "alpha": alpha, "selected": count, "threshold": threshold,
                             "share": float(np.mean(shares))})
    per_run = [np.mean([mcs[(a, b)] for b in runs if b != a], axis=0) for a in runs]
    return pd.DataFrame(rows), per_run
