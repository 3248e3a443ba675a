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
    """

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        """Codes z (batch, width) from the projections w_m . (x - b_pre)."""
        raise NotImplementedError

    def penalty(self, codes: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor | float:
        """A term added to the reconstruction loss (0 for methods without one)."""
        return 0.0

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor) -> None:
        """Called once per step with the detached projections of that step's batch."""

    def group_of_neuron(self) -> torch.Tensor | None:
        """Group index of each neuron, when the method has groups."""
        return None

    def target_frequencies(self) -> torch.Tensor | None:
        """Target activation frequency of each group, when the method has targets."""
        return None

    def export(self) -> dict[str, torch.Tensor]:
        """`b_enc` and `threshold` in SAELens's JumpReLU convention: z = h * (h > threshold), h = proj + b_enc."""
        raise NotImplementedError
