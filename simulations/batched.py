"""Many small SAEs trained as one computation (issue 6): grid points that share their shapes.

`train_many(configs)` stacks the SAEs of G runs (`SparseAutoencoder.stack`: every parameter gets
a leading axis of G) and trains them with THE training loop on batches of shape (G, batch, d),
each point drawing its own data stream (points on the same instance and seed share one); the
matmuls become batched ones, the gate and the controllers' statistics one computation
(`StackedMethod`), and the per-step Python and dispatch overhead is paid once for all G points.
Each point's controller runs on its own slice and schedule, so the result of every point equals
its separate `run` up to float rounding (tests/test_batched.py); for a fixed set of stacked
points it is reproducible bit for bit.
"""

from __future__ import annotations

import itertools
import time

import pandas as pd
import torch
from torch import nn

from simulations.methods.base import Method
from simulations.methods.bias_adaptation import BiasAdaptation
from simulations.recover import RecoverConfig, RecoverResult, finish, prepare, torch_batches
from simulations.sae import SparseAutoencoder
from simulations.train import train
from theory.validation import ConfigError


class StackedMethod(Method):
    """G BA/GBA methods, one per stacked SAE; projections and codes carry a leading axis of G.

    The gate, the support and the controllers' statistics are computed for all points at once:
    the G bias vectors live in one (G, M) tensor whose rows the points' own methods (and their
    controllers) hold as views and update in place, each on its own schedule.
    """

    sparse_codes = True

    def __init__(self, methods: list[BiasAdaptation]):
        super().__init__()
        self.methods = nn.ModuleList(methods)
        self.bias = torch.stack([method.bias for method in methods])
        for point, method in enumerate(methods):
            method.bias = self.bias[point]
        self.relu = torch.tensor([method.config.activation == "relu" for method in methods], device=self.bias.device)
        self._support_points = self._support_neurons = None

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        pre_activation = projection + self.bias.unsqueeze(-2)
        return torch.where(self.relu[:, None, None], torch.relu(pre_activation), projection * (pre_activation > 0))

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor | None, codes: torch.Tensor | None) -> None:
        for point, method in enumerate(self.methods):
            method.after_step(None if projection is None else projection[point], None if codes is None else codes[point])

    @torch.no_grad()
    def support(self, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`BiasAdaptation.support` of every point at once; rows index the flattened (G * batch)
        samples, columns are each point's own neurons."""
        points, batch, width = projection.shape
        point, rows, columns = (projection > -self.bias.unsqueeze(-2)).nonzero(as_tuple=True)
        neurons = point * width + columns
        flat_rows = point * batch + rows
        positive = projection.view(-1)[flat_rows * width + columns] + self.bias.view(-1)[neurons]
        counts = torch.bincount(neurons, minlength=points * width).view(points, width)
        largest = torch.zeros(points * width, device=projection.device).scatter_reduce_(0, neurons, positive, "amax")
        for method, point_counts, point_largest in zip(self.methods, counts, largest.view(points, width)):
            method.controller.record(point_counts, point_largest, batch)
        self._support_neurons = neurons
        self._support_points = point
        return flat_rows, columns

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return torch.where(self.relu[self._support_points], projection_values + self.bias.view(-1)[self._support_neurons], projection_values)


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
    # Points on the same instance and seed (a sweep of targets) read the same stream: sample it once.
    stream_of, streams = {}, []
    for config, (data, _, _, _) in zip(configs, prepared):
        key = (config.model, config.seed)
        if key not in stream_of:
            stream_of[key] = len(streams)
            streams.append(torch_batches(data, config.train.batch_size, config.seed, device))
    order = torch.tensor([stream_of[(config.model, config.seed)] for config in configs], device=device)
    batches = (torch.stack([next(stream) for stream in streams])[order] for _ in itertools.count())
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
