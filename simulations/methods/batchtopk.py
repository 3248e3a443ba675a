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
    """BatchTopK in training mode, JumpReLU at the running threshold in eval mode."""

    architecture = "jumprelu"

    sparse_codes = False
    """The batch-wide top k*B does not split into the sparse step's blocks of rows."""

    def __init__(self, config: BatchTopKConfig, width: int, device="cpu"):
        super().__init__(config, width, device)
        self.register_buffer("threshold", torch.zeros((), device=device))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.int64, device=device))

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        activation = torch.relu(self.pre_activation(projection))
        if not self.training:
            return activation * (activation > self.threshold)
        budget = min(round(self.config.k * activation.shape[0]), activation.numel())
        return keep_largest(activation.reshape(1, -1), budget).reshape(activation.shape)

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor | None, codes: torch.Tensor | None) -> None:
        self.record_firing(codes)  # the codes trained on: the batch's top k*B
        kept = codes[codes > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min()
        # The first estimate starts the average, so no early steps are spent climbing from 0.
        rate = 1.0 if self.threshold_steps == 0 else self.config.threshold_rate
        self.threshold.mul_(1 - rate).add_(rate * smallest)
        self.threshold_steps += 1

    def export(self) -> dict[str, torch.Tensor]:
        return {"b_enc": self.bias.detach().clone(), "threshold": self.threshold.expand_as(self.bias).clone()}
