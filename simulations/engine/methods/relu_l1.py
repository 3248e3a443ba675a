"""ReLU SAE with the decoder-norm-weighted L1 penalty (Bricken et al. 2023; Anthropic's April 2024 update).

z = ReLU(w_m . (x - b_pre) + b_enc) with b_enc learned; the loss adds lambda sum_m ||d_m|| z_m
(averaged over the batch), so shrinking a code by growing its decoder row does not pay.
Exported as SAELens 'jumprelu' with threshold 0 (identical to 'standard').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulations.engine.methods.base import Codes, LearnedBiasMethod, MethodConfig
from theory.validation import check_real


@dataclass(frozen=True)
class ReluL1Config(MethodConfig):
    """The L1 coefficient of a ReLU SAE."""

    l1_coefficient: float = 0.05
    """lambda. dictionary_learning's 0.1 on inputs with E||x||^2 = 1 and loss ||x - x_hat||^2 is
    0.05 for this library's unit-norm inputs and loss 1/2 ||x - x_hat||^2."""

    def __post_init__(self):
        check_real("l1_coefficient", self.l1_coefficient, 0.0)

    def build(self, width: int, device="cpu") -> "ReluL1":
        return ReluL1(self, width, device)


class ReluL1(LearnedBiasMethod):
    """ReLU gate with a learned bias; the sparsity comes from the penalty."""

    def __init__(self, config: ReluL1Config, width: int, device="cpu"):
        super().__init__(width, device)
        self.config = config

    def cutoff(self) -> torch.Tensor:
        return -self.bias.detach()

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return projection_values + self.bias[columns]  # ReLU is the identity on the support

    def loss(self, codes: Codes, residual: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        decoder_norms = decoder.norm(dim=-1)
        return self.config.l1_coefficient * (codes.values * decoder_norms[codes.columns]).sum() / codes.batch_size

    def export(self) -> dict[str, torch.Tensor]:
        return {"b_enc": self.bias.detach().clone(), "threshold": torch.zeros_like(self.bias.detach())}
