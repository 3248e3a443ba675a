"""BatchTopK (Bussmann et al. 2024): keep the k*B largest pre-activations of a whole batch of B.

Training keeps the top k*B entries of ReLU(h) over the batch, so samples share a budget of k
per sample on average. Each step also updates a running threshold theta, an exponential moving
average of the smallest kept activation (SAELens's rule); evaluation and inference use the
JumpReLU rule z = h 1[h > theta], which is independent of the batch. The SAE is exported as
SAELens 'jumprelu' with threshold = theta for every latent, as SAELens saves BatchTopK.
AuxK is inherited from TopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulations.engine.methods.base import Codes, Entries, Projections, gather
from simulations.engine.methods.topk import TopK, TopKConfig
from theory.validation import check_real


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """TopK over the batch, with a running inference threshold."""

    threshold_rate: float = 0.01
    """Rate of the moving average of the smallest kept activation (SAELens's topk_threshold_lr)."""

    def __post_init__(self):
        super().__post_init__()
        check_real("threshold_rate", self.threshold_rate, 0.0, 1.0, low_open=True)

    def build(self, width: int, device="cpu") -> "BatchTopK":
        self.check("batchtopk", width)
        return BatchTopK(self, width, device)


class BatchTopK(TopK):
    """BatchTopK in training mode, JumpReLU at the running threshold in eval mode.

    The batch-wide top k*B is found from the entries above a floor just below the previous
    step's smallest kept activation (one pass over the blocks of projections); when fewer than
    k*B entries clear the floor, some of the top k*B may lie below it, so a second pass gathers
    every positive activation. The kept set is always the exact top k*B, ties at its smallest
    value broken by row-major order.
    """

    architecture = "jumprelu"

    FLOOR_SHARE = 0.9
    """The candidates' floor as a share of the previous step's smallest kept activation: it moves
    by well under 10 % from one step to the next, and the floor admits a few times k*B entries."""

    def __init__(self, config: BatchTopKConfig, width: int, device="cpu"):
        super().__init__(config, width, device)
        self.register_buffer("threshold", torch.zeros((), device=device))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.int64, device=device))
        self._last_smallest = 0.0

    @torch.no_grad()
    def support(self, projections: Projections) -> Entries:
        if not self.training:
            return gather(projections, self.threshold, shift=self.bias)
        budget = min(round(self.config.k * projections.batch_size), projections.batch_size * projections.width)
        floor = self.FLOOR_SHARE * self._last_smallest
        entries = gather(projections, floor - self.bias)
        if len(entries) < budget and floor > 0:
            entries = gather(projections, -self.bias)
        activation = entries.projections + self.bias[entries.columns]
        keep = activation > 0
        if activation.numel() > budget:
            smallest = activation.kthvalue(activation.numel() - budget + 1).values
            keep &= activation > smallest
            # Ties at the smallest kept value: the first ones in row-major order, up to exactly k*B.
            tied = (activation == smallest).nonzero().squeeze(1)
            keep[tied[: budget - int(keep.sum())]] = smallest > 0
        return entries.select(keep)

    @torch.no_grad()
    def update(self, codes: Codes) -> None:
        super().update(codes)
        if not codes.values.numel():
            return
        # Move the running threshold toward the smallest activation kept in this step.
        smallest = codes.values.min()
        self._last_smallest = float(smallest)
        # The first estimate starts the average, so no early steps are spent climbing from 0.
        rate = 1.0 if self.threshold_steps == 0 else self.config.threshold_rate
        self.threshold.mul_(1 - rate).add_(rate * smallest)
        self.threshold_steps += 1

    def export(self) -> dict[str, torch.Tensor]:
        return {"b_enc": self.bias.detach().clone(), "threshold": self.threshold.expand_as(self.bias).clone()}
