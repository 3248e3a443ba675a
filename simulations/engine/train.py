"""The one training loop: every method (BA, GBA and the baselines) is a plug-in of `train`."""

from __future__ import annotations

import itertools

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from simulations.engine.methods.base import Method
from simulations.engine.progress import progress_bar
from simulations.engine.recovery import best_cosines
from simulations.engine.sae import SparseAutoencoder, normalise
from simulations.engine.step import block_projections, dense_forward, sparse_forward
from theory.validation import ConfigError, check_choice, check_int, check_real


DEFAULT_LEARNING_RATE = 3e-3
"""The loop's learning rate where neither the setting nor the method gives one."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every method."""

    steps: int = 2000
    """Optimiser steps (2M samples at the default batch: long enough for the default GBA controller
    to settle on the small instances `gba recover` is run on)."""
    batch_size: int = 1024
    """Samples per step."""
    learning_rate: float | None = None
    """Adam(W) learning rate for every trained parameter (never the adapted biases). None = the
    method's recommended rate where it has one (`MethodConfig.recommended_learning_rate`, resolved by
    `RecoverConfig`), else DEFAULT_LEARNING_RATE."""
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
    sparse_step: bool = True
    """Use the sparse step (decode and backward on the active codes only) for methods with exactly
    sparse codes; the result equals the dense step's up to float rounding."""
    autocast_bf16: bool = False
    """Run the forward pass under torch.autocast with bfloat16 (the dense matmuls in bf16; the
    parameters, gradients, sparse decode and optimiser stay fp32)."""
    sparse_max_density: float = 0.05
    """The sparse step is taken when the previous batch's share of non-zero codes is at most this
    (early training, with biases at 0, is dense and takes the dense step)."""

    def resolved_learning_rate(self) -> float:
        return DEFAULT_LEARNING_RATE if self.learning_rate is None else self.learning_rate

    def __post_init__(self):
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        if self.learning_rate is not None:
            check_real("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_choice("optimizer", self.optimizer, ("adam", "adamw"))
        check_real("weight_decay", self.weight_decay, 0.0)
        check_int("log_every", self.log_every, 1)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        if not isinstance(self.sparse_step, bool):
            raise ConfigError(f"sparse_step: must be true or false, got {self.sparse_step!r}")
        check_real("sparse_max_density", self.sparse_max_density, 0.0, 1.0)
        if not isinstance(self.autocast_bf16, bool):
            raise ConfigError(f"autocast_bf16: must be true or false, got {self.autocast_bf16!r}")


@dataclass
class Checkpoint:
    """The loop's resume hook: `save` gets the full training state every `every` steps; `state` resumes one.

    A saved state is taken right after a history row, so `every` must be a multiple of the
    config's `log_every`. The caller's `batches` must continue the stream from batch
    `state["step"]` on (e.g. a stream whose batch i depends only on (seed, i)); then the resumed
    run ends with exactly the weights of an uninterrupted one.
    """

    every: int
    """Steps between saved states."""
    save: Callable[[dict], None]
    """Called with the state (a dict of tensors and numbers, ready for torch.save)."""
    state: dict | None = None
    """A state written by `save`, to resume from; None starts afresh."""


def training_state(step: int, sae: SparseAutoencoder, method: Method, optimiser, history: list) -> dict:
    """Everything the loop needs to continue after `step`: weights, method state, optimiser moments, history (a copy)."""
    return copy.deepcopy({
        "step": step,
        "sae": sae.state_dict(),
        "method": method.state_dict(),
        "optimiser": optimiser.state_dict(),
        "history": history,
    })


def restore_state(state: dict, sae: SparseAutoencoder, method: Method, optimiser, history: list) -> int:
    """Load a `training_state` into the run; returns the step it was taken after."""
    sae.load_state_dict(state["sae"])
    method.load_state_dict(state["method"])
    optimiser.load_state_dict(state["optimiser"])
    history.extend(state["history"])
    return int(state["step"])


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch.cuda.is_available() is False; use cpu or auto")
    return torch.device(name)


def train(
    sae: SparseAutoencoder,
    method: Method,
    batches: Iterator[torch.Tensor],
    config: TrainConfig,
    *,
    features: np.ndarray | None = None,
    progress: bool = False,
    on_log: Callable[[dict], None] | None = None,
    checkpoint: Checkpoint | None = None,
) -> pd.DataFrame:
    """Train `sae` with `method` on `config.steps` batches; returns the history as a tidy table.

    `batches` yields float tensors (batch, d) on the SAE's device. With `features` (the true V),
    the history also tracks FRR(0.9) of the decoder rows. A stack of G SAEs
    (`SparseAutoencoder.stack`, with a `simulations.engine.stack.MethodStack`) trains on batches of
    shape (G, batch, d) with `features` a list of G matrices (or None); its history has a `point` column.
    `checkpoint` saves and resumes the run.
    """
    parameters = [p for p in list(sae.parameters()) + list(method.parameters()) if p.requires_grad]
    if config.optimizer == "adamw":
        optimiser = torch.optim.AdamW(parameters, lr=config.resolved_learning_rate(), weight_decay=config.weight_decay)
    else:
        optimiser = torch.optim.Adam(parameters, lr=config.resolved_learning_rate())
    point_methods = [method] if sae.points is None else list(method.methods)
    point_features = [features] if sae.points is None else list(features or [None] * sae.points)
    history = []
    active_counts = torch.zeros(sae.weight.shape[:-1], device=sae.weight.device)
    window_samples = 0
    # Codes start dense (biases at 0), so the first step is dense unless the method calibrates; later
    # ones follow the last step's density.
    density = 1.0
    started = time.perf_counter()
    method.train()
    start = 0
    if checkpoint is not None:
        if checkpoint.every % config.log_every:
            raise ConfigError(f"checkpoint every: must be a multiple of log_every ({config.log_every}), got {checkpoint.every}")
        if checkpoint.state is not None:
            start = restore_state(checkpoint.state, sae, method, optimiser, history)
            density = checkpoint.state["density"]
    if start == 0:
        # A fresh run shows the SAE and the method its first batch before training on it (b_pre's median
        # start, BA's calibrated start);
        # a method that calibrates says how dense that batch's codes are, so the first step may be sparse.
        first = next(batches)
        batches = itertools.chain([first], batches)
        with torch.no_grad():
            x = normalise(first) if config.normalise_inputs else first
            sae.start_pre_bias(x)
            calibrated = method.calibrate(block_projections(sae, x - sae.pre_bias.unsqueeze(-2)))
        if calibrated is not None:
            density = calibrated
    steps = progress_bar(range(start + 1, config.steps + 1), enabled=progress, desc="training", unit="steps", leave=False)
    for step in steps:
        x = next(batches)
        if config.normalise_inputs:
            x = normalise(x)
        # Checked every step: a method may need the dense step for a while (TopK while AuxK is active).
        sparse = config.sparse_step and not method.needs_dense_step and density <= config.sparse_max_density
        forward = sparse_forward if sparse else dense_forward
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.autocast_bf16):
            result = forward(sae, method, x)
        total = (result.loss + result.penalty).sum()
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        sae.normalise_()
        method.update(result.codes)

        active_counts += result.neuron_counts
        window_samples += x.shape[-2]
        density = float(result.neuron_counts.sum()) / (result.neuron_counts.numel() * x.shape[-2])
        if step % config.log_every == 0 or step == config.steps:
            decoders = sae.decoder_weight.detach().reshape(-1, sae.width, sae.d).cpu().numpy()
            frequencies = (active_counts / window_samples).cpu().reshape(-1, sae.width)
            batch_counts = result.neuron_counts.reshape(-1, sae.width).sum(dim=1).cpu()
            for point, point_method in enumerate(point_methods):
                row = {} if sae.points is None else {"point": point}
                row.update(
                    step=step,
                    samples=step * x.shape[-2],
                    loss=_point_value(result.loss, point),
                    penalty=_point_value(result.penalty, point),
                    l0=float(batch_counts[point]) / x.shape[-2],
                    seconds=time.perf_counter() - started,
                )
                row.update(_group_columns(point_method, frequencies[point]))
                if point_features[point] is not None:
                    row["frr_0.9"] = float(np.mean(best_cosines(point_features[point], decoders[point]) >= 0.9))
                history.append(row)
                if on_log is not None:
                    on_log(row)
            active_counts.zero_()
            window_samples = 0
        if checkpoint is not None and step % checkpoint.every == 0 and step < config.steps:
            # The density picks the next step's path (sparse or dense), so it is part of the state.
            checkpoint.save({**training_state(step, sae, method, optimiser, history), "density": density})
    return pd.DataFrame(history)


def _point_value(value: torch.Tensor | float, point: int) -> float:
    """The value of one point of a stack (or the single value)."""
    if torch.is_tensor(value):
        value = value.detach()
        return float(value[point]) if value.dim() else float(value)
    return float(value)


def _group_columns(method: Method, frequency: torch.Tensor) -> dict:
    """Per-group target, mean frequency and share of neurons above target, for methods with groups."""
    targets = method.frequency_targets()
    if targets is None:
        return {}
    group_index, targets = targets.group_of_neuron.cpu(), targets.targets
    row = {}
    for k in range(len(targets)):
        members = frequency[group_index == k]
        row[f"group{k}_target"] = float(targets[k])
        row[f"group{k}_frequency"] = float(members.mean())
        row[f"group{k}_above_target"] = float((members > targets[k]).float().mean())
    return row
