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

from simulations.methods.topk import TopK, TopKConfig, keep_largest
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

    On the sparse step (while AuxK is idle, as for TopK) the batch-wide top k*B is found in two
    passes: each block of rows keeps its candidates, the activations above a floor just below the
    previous step's smallest kept activation, and `select_support` keeps the k*B largest of them.
    When fewer than k*B candidates exist, some of the top k*B may lie below the floor: the floor
    drops to 0 and the blocks are gathered again, so the kept set is always the dense step's (up
    to ties).
    """

    architecture = "jumprelu"

    FLOOR_SHARE = 0.9
    """The candidates' floor as a share of the previous step's smallest kept activation: it moves
    by well under 10 % from one step to the next, and the floor admits a few times k*B entries."""

    def __init__(self, config: BatchTopKConfig, width: int, device="cpu"):
        super().__init__(config, width, device)
        self.register_buffer("threshold", torch.zeros((), device=device))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.int64, device=device))
        self._floor = None
        self._step_smallest = None
        self._last_smallest = 0.0

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        activation = torch.relu(self.pre_activation(projection))
        if not self.training:
            return activation * (activation > self.threshold)
        budget = min(round(self.config.k * activation.shape[0]), activation.numel())
        return keep_largest(activation.reshape(1, -1), budget).reshape(activation.shape)

    @torch.no_grad()
    def support(self, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._floor is None:  # the first block of a step
            self._floor = self.FLOOR_SHARE * self._last_smallest
        self._step_samples += projection.shape[0]
        return (projection > self._floor - self.bias).nonzero(as_tuple=True)

    @torch.no_grad()
    def select_support(self, rows, columns, projection_values) -> tuple | None:
        activation = projection_values + self.bias[columns]
        budget = min(round(self.config.k * self._step_samples), self._step_samples * self.bias.numel())
        if activation.numel() < budget and self._floor > 0:
            self._floor, self._step_samples = 0.0, 0  # gather every positive activation instead
            return None
        keep = activation > 0
        if activation.numel() > budget:
            smallest = activation.kthvalue(activation.numel() - budget + 1).values
            keep &= activation >= smallest
        self._floor = None
        self._step_fired[columns[keep]] = True
        self._step_smallest = activation[keep].min() if keep.any() else None
        return rows[keep], columns[keep], projection_values[keep]

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor | None, codes: torch.Tensor | None) -> None:
        if codes is None:  # a sparse step: `select_support` kept the batch's top k*B
            super().after_step(None, None)
            self._update_threshold(self._step_smallest)
            return
        self.record_firing(codes)  # the codes trained on: the batch's top k*B
        kept = codes[codes > 0]
        self._update_threshold(kept.min() if kept.numel() else None)

    def _update_threshold(self, smallest: torch.Tensor | None) -> None:
        """Move the running threshold toward the smallest activation kept in this step."""
        if smallest is None:
            return
        self._last_smallest = float(smallest)
        # The first estimate starts the average, so no early steps are spent climbing from 0.
        rate = 1.0 if self.threshold_steps == 0 else self.config.threshold_rate
        self.threshold.mul_(1 - rate).add_(rate * smallest)
        self.threshold_steps += 1

    def export(self) -> dict[str, torch.Tensor]:
        return {"b_enc": self.bias.detach().clone(), "threshold": self.threshold.expand_as(self.bias).clone()}
