"""The interface every training method implements."""

from __future__ import annotations

import torch
from torch import nn


class MethodConfig:
    """Base of the frozen method configs: `build` makes the method for an SAE of a given width."""

    def build(self, width: int, device="cpu") -> "Method":
        raise NotImplementedError


class Method(nn.Module):
    """A sparsity mechanism: projections -> codes, an optional penalty, optional out-of-band updates.

    Parameters of the method (a learned bias or threshold) are trained with the SAE's; buffers
    (an adapted bias) are not. `export` gives the SAELens JumpReLU/standard tensors of the gate.

    A method whose codes are exactly zero off a support it can find without gradients sets
    `sparse_codes = True` and implements `support` and `code_values`; the training loop then uses
    the sparse step (`simulations.sparse_step`) whenever the codes are sparse enough.
    """

    sparse_codes: bool = False
    """True when `support` + `code_values` give exactly the codes of `encode` (and the same gradients)."""

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        """Codes z (batch, width) from the projections w_m . (x - b_pre)."""
        raise NotImplementedError

    def penalty(self, codes: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor | float:
        """A term added to the reconstruction loss (0 for methods without one)."""
        return 0.0

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor | None) -> None:
        """Called once per step with the detached projections of that step's batch (None after a
        sparse step: `support` has seen them)."""

    def support(self, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) of the non-zero codes of `encode(projection)`, in row-major order, without
        gradients; `projection` must not be modified. Takes the statistics `after_step` needs."""
        raise NotImplementedError

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """The non-zero codes (with gradients) from their projections; `columns` are their neurons."""
        raise NotImplementedError

    def sparse_penalty(self, codes, decoder_norms: torch.Tensor) -> torch.Tensor | float:
        """`penalty` of `codes` (a `simulations.sparse_step.SparseCodes`); override to avoid the dense codes."""
        if type(self).penalty is Method.penalty:
            return 0.0
        return self.penalty(codes.to_dense(), decoder_norms)

    def group_of_neuron(self) -> torch.Tensor | None:
        """Group index of each neuron, when the method has groups."""
        return None

    def target_frequencies(self) -> torch.Tensor | None:
        """Target activation frequency of each group, when the method has targets."""
        return None

    def export(self) -> dict[str, torch.Tensor]:
        """`b_enc` and `threshold` in SAELens's JumpReLU convention: z = h * (h > threshold), h = proj + b_enc."""
        raise NotImplementedError
