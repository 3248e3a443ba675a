"""G methods of any kind, one per SAE of a stack (`SparseAutoencoder.stack`), as one method.

A stack trains as the block-diagonal problem: sample b of point g is row g*B + b and neuron m
of point g is column g*M + m of the sparse form. `MethodStack` answers every hook by handing
each point's slice to that point's own method, so every method stacks and none is written twice.
"""

from __future__ import annotations

import torch
from torch import nn

from simulations.engine.methods.base import Codes, Entries, Method, Projections


class StackedProjections(Projections):
    """The projections of a stack: one `Projections` per point."""

    def __init__(self, points: list[Projections]):
        self.points = points
        self.batch_size, self.width = points[0].batch_size, points[0].width


class MethodStack(Method):
    """The methods of G stacked points of width M."""

    def __init__(self, methods: list[Method], width: int):
        super().__init__()
        self.methods = nn.ModuleList(methods)
        self.width = width

    @property
    def needs_dense_step(self) -> bool:
        return any(method.needs_dense_step for method in self.methods)

    @torch.no_grad()
    def support(self, projections: StackedProjections) -> Entries:
        parts = [method.support(point_projections) for method, point_projections in zip(self.methods, projections.points)]
        return self._join(parts, projections.batch_size)

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        pieces = self._pieces(columns // self.width)
        return torch.cat([
            method.code_values(projection_values[piece], columns[piece] - point * self.width)
            for point, (method, piece) in enumerate(zip(self.methods, pieces))
        ])

    def dense_codes(self, projection: torch.Tensor) -> tuple[torch.Tensor, Entries]:
        codes, parts = zip(*(method.dense_codes(point) for method, point in zip(self.methods, projection)))
        return torch.stack(codes), self._join(parts, projection.shape[1])

    def loss(self, codes: Codes, residual: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor | float:
        losses = [method.loss(point_codes, residual[point], decoder[point])
                  for point, (method, point_codes) in enumerate(zip(self.methods, self.split(codes)))]
        if all(isinstance(loss, float) and loss == 0.0 for loss in losses):
            return 0.0
        return torch.stack([torch.as_tensor(loss, dtype=decoder.dtype, device=decoder.device) for loss in losses])

    @torch.no_grad()
    def calibrate(self, projections: StackedProjections) -> float | None:
        shares = [method.calibrate(point) for method, point in zip(self.methods, projections.points)]
        return None if None in shares else sum(shares) / len(shares)

    @torch.no_grad()
    def update(self, codes: Codes) -> None:
        for method, point_codes in zip(self.methods, self.split(codes)):
            method.update(point_codes)

    def split(self, codes: Codes) -> list[Codes]:
        """Each point's own codes, in its own rows and columns."""
        if codes.dense:
            return [Codes(values, projections, codes.columns, None, codes.batch_size)
                    for values, projections in zip(codes.values, codes.projections)]
        batch = codes.batch_size
        return [
            Codes(codes.values[piece], codes.projections[piece], codes.columns[piece] - point * self.width,
                  codes.rows[piece] - point * batch, batch)
            for point, piece in enumerate(self._pieces(codes.rows // batch))
        ]

    def _join(self, parts, batch: int) -> Entries:
        """Each point's entries in the stack's flat rows and columns."""
        return Entries(
            torch.cat([entries.rows + point * batch for point, entries in enumerate(parts)]),
            torch.cat([entries.columns + point * self.width for point, entries in enumerate(parts)]),
            torch.cat([entries.projections for entries in parts]),
        )

    def _pieces(self, point_of_entry: torch.Tensor) -> list[slice]:
        """Each point's contiguous range of entries (entries are ordered by point)."""
        bounds = [0] + torch.bincount(point_of_entry, minlength=len(self.methods)).cumsum(0).tolist()
        return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]
