"""Many small SAEs trained as one computation (issue 6): grid points that share their shapes.

`train_many(configs)` stacks the SAEs of G runs (`SparseAutoencoder.stack`: every parameter gets
a leading axis of G) and trains them with THE training loop on batches of shape (G, batch, d),
each point drawing its own data stream; the matmuls become batched ones and the per-step Python
and dispatch overhead is paid once for all G points. Each point's method (its gate, penalty and
bias controller) runs on its own slice, so the result of every point equals its separate `run`
up to float rounding (tests/test_batched.py).
"""

from __future__ import annotations

import itertools
import time

import pandas as pd
import torch
from torch import nn

from simulations.methods.base import Method
from simulations.recover import RecoverConfig, RecoverResult, finish, prepare, torch_batches
from simulations.sae import SparseAutoencoder
from simulations.sparse_step import SparseCodes
from simulations.train import train
from theory.validation import ConfigError


class StackedMethod(Method):
    """G methods, one per stacked SAE; projections and codes carry a leading axis of G."""

    def __init__(self, methods: list[Method]):
        super().__init__()
        self.methods = nn.ModuleList(methods)
        self.sparse_codes = all(method.sparse_codes for method in methods)
        self._support_sizes: list[int] = []

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        return torch.stack([method.encode(part) for method, part in zip(self.methods, projection)])

    def penalty(self, codes: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [torch.as_tensor(m.penalty(c, n), device=codes.device) for m, c, n in zip(self.methods, codes, decoder_norms)]
        )

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor | None, codes: torch.Tensor | None) -> None:
        for point, method in enumerate(self.methods):
            method.after_step(None if projection is None else projection[point], None if codes is None else codes[point])

    def support(self, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows index the flattened (G * batch) samples; columns are each point's own neurons."""
        batch = projection.shape[1]
        parts = [method.support(part) for method, part in zip(self.methods, projection)]
        self._support_sizes = [len(rows) for rows, _ in parts]
        return (
            torch.cat([rows + point * batch for point, (rows, _) in enumerate(parts)]),
            torch.cat([columns for _, columns in parts]),
        )

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        pieces = zip(self.methods, projection_values.split(self._support_sizes), columns.split(self._support_sizes))
        return torch.cat([method.code_values(values, cols) for method, values, cols in pieces])

    def sparse_penalty(self, codes, decoder_norms: torch.Tensor) -> torch.Tensor:
        batch = codes.shape[0] // len(self.methods)
        penalties, start = [], 0
        for point, (method, size) in enumerate(zip(self.methods, self._support_sizes)):
            part = slice(start, start + size)
            point_codes = SparseCodes(
                codes.rows[part] - point * batch, codes.columns[part], codes.values[part], (batch, codes.shape[1])
            )
            penalties.append(torch.as_tensor(method.sparse_penalty(point_codes, decoder_norms[point])))
            start += size
        return torch.stack(penalties)


def stackable(first: RecoverConfig, other: RecoverConfig) -> bool:
    """Points train together when their SAE shapes and optimiser settings agree, and both are BA/GBA
    (the baselines' auxiliary losses and running state are per point: they train alone)."""
    same = first.sae == other.sae and first.train == other.train and first.model.d == other.model.d
    return same and {first.method, other.method} <= {"ba", "gba"}


def train_many(configs: list[RecoverConfig]) -> list[RecoverResult]:
    """Train and evaluate G grid points as one batched computation; same results as `run` on each."""
    if not configs:
        return []
    if not all(stackable(configs[0], config) for config in configs):
        raise ConfigError("configs: points trained together must share sae, train settings and d")
    started = time.perf_counter()
    prepared = [prepare(config) for config in configs]
    saes = [sae for _, sae, _, _ in prepared]
    stacked = SparseAutoencoder.stack(saes)
    method = StackedMethod([point_method for _, _, point_method, _ in prepared])
    device = stacked.weight.device
    streams = [
        torch_batches(data, config.train.batch_size, config.seed, device)
        for config, (data, _, _, _) in zip(configs, prepared)
    ]
    batches = (torch.stack([next(stream) for stream in streams]) for _ in itertools.count())
    rows = [[] for _ in configs]
    train(
        stacked,
        method,
        batches,
        configs[0].train,
        features=[data.features for data, *_ in prepared],
        on_log=lambda row: rows[row["point"]].append({k: v for k, v in row.items() if k != "point"}),
    )
    stacked.unstack_into(saes)
    results = [
        finish(config, data, sae, point_method, initial_decoder, pd.DataFrame(point_rows), started)
        for config, (data, sae, point_method, initial_decoder), point_rows in zip(configs, prepared, rows)
    ]
    seconds = time.perf_counter() - started
    for result in results:
        result.metrics["wall_seconds"] = seconds / len(results)  # each point's share of the batched run
    return results
