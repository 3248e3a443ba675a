"""JumpReLU SAE (Rajamanoharan et al. 2024): a learned threshold per latent, trained through a step.

z = h 1[h > theta] with h = w_m . (x - b_pre) + b_enc and theta = exp(log_theta) learned. The
step has no useful gradient, so theta gets the straight-through estimate of the paper (and
SAELens): d/dtheta H(h - theta) = -(1/epsilon) K((h - theta)/epsilon) with the rectangle kernel
K(u) = 1[|u| < 1/2] of bandwidth epsilon. The sparsity term is either the L0 penalty
lambda E[sum_m H(h_m - theta_m)] or, with `target_l0` set, dictionary_learning's
lambda (E[L0] / target - 1)^2. Exported as SAELens 'jumprelu' (b_enc, threshold = theta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from simulations.engine.methods.base import Codes, LearnedBiasMethod, MethodConfig
from theory.validation import check_real


@dataclass(frozen=True)
class JumpReLUConfig(MethodConfig):
    """Threshold initialisation, STE bandwidth and the sparsity term of a JumpReLU SAE."""

    l0_coefficient: float = 0.01
    """lambda: the loss charged per active latent. With this library's unit-norm inputs a sample's
    whole reconstruction loss is at most 1/2, so lambda sits far below SAELens's 1.0 (unnormalised
    LLM activations). With `target_l0`, the weight of the squared relative L0 error (dictionary_learning: 1.0)."""
    target_l0: float | None = None
    """When set, the sparsity term is lambda (L0 / target_l0 - 1)^2 (dictionary_learning) instead of lambda L0."""
    bandwidth: float = 0.05
    """epsilon, width of the rectangle kernel of the straight-through estimator (SAELens's 0.05)."""
    initial_threshold: float = 0.1
    """theta of every latent at the start. SAELens's 0.01 suits long LLM runs; theta is trained in
    log space, so Adam moves it by a factor of about e^(lr * steps) at most, and short runs on
    unit-norm inputs need a start near the spread of random projections (1/sqrt(d))."""

    def __post_init__(self):
        check_real("l0_coefficient", self.l0_coefficient, 0.0)
        if self.target_l0 is not None:
            check_real("target_l0", self.target_l0, 0.0, low_open=True)
        check_real("bandwidth", self.bandwidth, 0.0, low_open=True)
        check_real("initial_threshold", self.initial_threshold, 0.0, low_open=True)

    def build(self, width: int, device="cpu") -> "JumpReLU":
        return JumpReLU(self, width, device)


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 1[|u| < 1/2]."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """h 1[h > theta]: exact gradient in h, straight-through estimate in theta."""

    @staticmethod
    def forward(ctx, pre_activation, threshold, bandwidth: float):
        ctx.save_for_backward(pre_activation, threshold)
        ctx.bandwidth = bandwidth
        return pre_activation * (pre_activation > threshold)

    @staticmethod
    def backward(ctx, grad_output):
        pre_activation, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_pre = grad_output * (pre_activation > threshold)
        kernel = rectangle((pre_activation - threshold) / bandwidth)
        # sum_to_size: over the batch for a (batch, width) step, nothing for the sparse step's entries.
        grad_threshold = (-(threshold / bandwidth) * kernel * grad_output).sum_to_size(threshold.shape)
        return grad_pre, grad_threshold, None


class StepFunction(torch.autograd.Function):
    """H(h - theta): no gradient in h, straight-through estimate in theta."""

    @staticmethod
    def forward(ctx, pre_activation, threshold, bandwidth: float):
        ctx.save_for_backward(pre_activation, threshold)
        ctx.bandwidth = bandwidth
        return (pre_activation > threshold).to(pre_activation.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        pre_activation, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        kernel = rectangle((pre_activation - threshold) / bandwidth)
        grad_threshold = (-(1.0 / bandwidth) * kernel * grad_output).sum_to_size(threshold.shape)
        return None, grad_threshold, None


class JumpReLU(LearnedBiasMethod):
    """Learned per-latent thresholds; the sparsity term reads the pre-activations on the support.

    The support is every h > theta - 0.51 epsilon: the active codes and the zero codes inside
    the band |h - theta| < epsilon/2 where the straight-through estimate reaches theta.
    """

    def __init__(self, config: JumpReLUConfig, width: int, device="cpu"):
        super().__init__(width, device)
        self.config = config
        self.log_threshold = nn.Parameter(torch.full((width,), math.log(config.initial_threshold), device=device))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def cutoff(self) -> torch.Tensor:
        # The kernel's half-width below theta, widened by 1 % of the bandwidth: far beyond float
        # rounding, so every entry the straight-through estimate reaches is inside.
        return (self.threshold - self.bias - 0.51 * self.config.bandwidth).detach()

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return JumpReLUFunction.apply(projection_values + self.bias[columns], self.threshold[columns], self.config.bandwidth)

    def loss(self, codes: Codes, residual: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        # The step has no gradient in h, so the bias needs none here either.
        pre_activation = codes.projections.detach() + self.bias.detach()[codes.columns]
        active = StepFunction.apply(pre_activation, self.threshold[codes.columns], self.config.bandwidth)
        l0 = active.sum() / codes.batch_size
        if self.config.target_l0 is not None:
            return self.config.l0_coefficient * (l0 / self.config.target_l0 - 1).pow(2)
        return self.config.l0_coefficient * l0

    def export(self) -> dict[str, torch.Tensor]:
        return {"b_enc": self.bias.detach().clone(), "threshold": self.threshold.detach().clone()}
