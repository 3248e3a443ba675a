"""The one training loop: every method (BA, GBA and the baselines) is a plug-in of `train`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from simulations.methods.base import Method
from simulations.sae import SparseAutoencoder
from theory.metrics import feature_recovery_rate
from theory.validation import ConfigError, check_choice, check_int, check_real


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every method."""

    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 1024
    """Samples per step."""
    learning_rate: float = 3e-3
    """Adam(W) learning rate for every trained parameter (never the adapted biases)."""
    optimizer: str = "adam"
    """'adam' or 'adamw'."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW only)."""
    normalise_inputs: bool = True
    """Scale every input to unit norm ("sample and normalize X_t", Algorithm 1)."""
    log_every: int = 50
    """Steps between history rows (loss, L0, per-group frequencies, FRR when features are known)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""

    def __post_init__(self):
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_real("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_choice("optimizer", self.optimizer, ("adam", "adamw"))
        check_real("weight_decay", self.weight_decay, 0.0)
        check_int("log_every", self.log_every, 1)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch.cuda.is_available() is False; use cpu or auto")
    return torch.device(name)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit norm (a zero row stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The paper's 1/2 ||x_hat - x||^2, averaged over the batch."""
    return 0.5 * (reconstruction - x).pow(2).sum(dim=1).mean()


def train(
    sae: SparseAutoencoder,
    method: Method,
    batches: Iterator[torch.Tensor],
    config: TrainConfig,
    *,
    features: np.ndarray | None = None,
    progress: bool = False,
    on_log: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Train `sae` with `method` on `config.steps` batches; returns the history as a tidy table.

    `batches` yields float tensors (batch, d) on the SAE's device. With `features` (the true V),
    the history also tracks FRR(0.9) of the decoder rows.
    """
    parameters = [p for p in list(sae.parameters()) + list(method.parameters()) if p.requires_grad]
    if config.optimizer == "adamw":
        optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        optimiser = torch.optim.Adam(parameters, lr=config.learning_rate)
    groups = method.group_of_neuron()
    targets = method.target_frequencies()
    history = []
    active_counts = torch.zeros(sae.width, device=sae.weight.device)
    window_samples = 0
    started = time.perf_counter()
    for step in tqdm(range(1, config.steps + 1), disable=not progress, desc="training", leave=False):
        x = next(batches)
        if config.normalise_inputs:
            x = normalise(x)
        projection = sae.project(x)
        codes = method.encode(projection)
        reconstruction = sae.decode(codes)
        loss = reconstruction_loss(reconstruction, x)
        penalty = method.penalty(codes, sae.decoder_weight.norm(dim=1))
        total = loss + penalty
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        sae.normalise_()
        method.after_step(projection.detach())

        active = codes.detach() != 0
        active_counts += active.sum(dim=0)
        window_samples += x.shape[0]
        if step % config.log_every == 0 or step == config.steps:
            row = {
                "step": step,
                "samples": step * x.shape[0],
                "loss": float(loss.detach()),
                "penalty": float(penalty.detach()) if torch.is_tensor(penalty) else float(penalty),
                "l0": float(active.sum(dim=1).float().mean()),
                "seconds": time.perf_counter() - started,
            }
            frequency = (active_counts / window_samples).cpu()
            if groups is not None:
                group_index = groups.cpu()
                for k in range(len(targets)):
                    members = frequency[group_index == k]
                    row[f"group{k}_target"] = float(targets[k])
                    row[f"group{k}_frequency"] = float(members.mean())
                    row[f"group{k}_above_target"] = float((members > targets[k]).float().mean())
            if features is not None:
                row["frr_0.9"] = feature_recovery_rate(features, sae.decoder_weight.detach().cpu().numpy(), 0.9)
            history.append(row)
            if on_log is not None:
                on_log(row)
            active_counts.zero_()
            window_samples = 0
    return pd.DataFrame(history)
