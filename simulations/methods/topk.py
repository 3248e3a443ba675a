"""TopK (Makhzani & Frey 2013; Gao et al. 2024): keep the k largest pre-activations of each sample.

z = ReLU(h) on the k largest entries of h = w_m . (x - b_pre) + b_enc, 0 elsewhere; b_enc is
learned. The optional AuxK loss (Gao et al. §A.2) revives dead latents: the k_aux largest
pre-activations among the latents that have not fired for `dead_window` samples must reconstruct
the main reconstruction's residual, weighted by min(#dead / k_aux, 1) as in SAELens.

Export: SAELens's 'topk' architecture (W_enc, W_dec, b_enc, b_dec; k is `method_config.k` in
config.json). A per-sample TopK has no fixed threshold, so no `threshold` tensor is exported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulations.methods.base import LearnedBiasMethod, MethodConfig, check_width
from theory.validation import check_int, check_real


@dataclass(frozen=True)
class TopKConfig(MethodConfig):
    """Per-sample TopK with the optional AuxK loss on dead latents."""

    k: int = 32
    """Active latents per sample (sparsify's and OpenAI's default 32; SAELens uses 100 for LLMs)."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. and dictionary_learning: 1/32); 0 turns AuxK off (sparsify's default)."""
    aux_k: int | None = None
    """Latents in the AuxK reconstruction; None = d/2 (SAELens, dictionary_learning)."""
    dead_window: int = 10_000_000
    """A latent is dead when it has not fired in this many training samples (the field's 10M tokens;
    scale it to the run: a toy run of 250k samples never declares a latent dead at the default)."""

    def __post_init__(self):
        check_int("k", self.k, 1)
        check_real("aux_coefficient", self.aux_coefficient, 0.0)
        if self.aux_k is not None:
            check_int("aux_k", self.aux_k, 1)
        check_int("dead_window", self.dead_window, 1)

    def check(self, method: str, width: int) -> None:
        check_width("k", self.k, width)

    def build(self, width: int, device="cpu") -> "TopK":
        self.check("topk", width)
        return TopK(self, width, device)


def keep_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """`values` with everything but the k largest entries of each row set to 0."""
    top, index = values.topk(k, dim=-1)
    return torch.zeros_like(values).scatter(-1, index, top)


class TopK(LearnedBiasMethod):
    """Per-sample TopK gate; counts the samples since each latent last fired (for AuxK)."""

    architecture = "topk"

    def __init__(self, config: TopKConfig, width: int, device="cpu"):
        super().__init__(width, device)
        self.config = config
        self.register_buffer("samples_since_fired", torch.zeros(width, dtype=torch.int64, device=device))
        self._step_samples = 0
        self._step_fired = torch.zeros(width, dtype=torch.bool, device=device)

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        return keep_largest(torch.relu(self.pre_activation(projection)), self.config.k)

    def dead(self) -> torch.Tensor:
        """Latents that have not fired within the last `dead_window` training samples."""
        return self.samples_since_fired >= self.config.dead_window

    def auxiliary_loss(self, projection, codes, residual, decoder):
        if self.config.aux_coefficient == 0:
            return 0.0
        dead = self.dead()
        dead_count = int(dead.sum())
        if dead_count == 0:
            return 0.0
        aux_k = min(self.config.aux_k or max(decoder.shape[1] // 2, 1), dead_count)
        dead_pre_activation = torch.relu(self.pre_activation(projection)).masked_fill(~dead, 0.0)
        estimate = keep_largest(dead_pre_activation, aux_k) @ decoder
        scale = min(dead_count / aux_k, 1.0)
        return self.config.aux_coefficient * scale * 0.5 * (estimate - residual).pow(2).sum(dim=1).mean()

    @property
    def sparse_codes(self) -> bool:
        """The sparse step applies while AuxK is idle (no dead latent): its loss needs every projection."""
        return self.config.aux_coefficient == 0 or not bool(self.dead().any())

    @torch.no_grad()
    def support(self, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top, index = self.pre_activation(projection).topk(self.config.k, dim=-1)
        index, order = index.sort(dim=-1)  # row-major: columns ascending within each row
        kept = (top.gather(-1, order) > 0).flatten()
        rows = torch.arange(projection.shape[0], device=projection.device).repeat_interleave(self.config.k)[kept]
        columns = index.flatten()[kept]
        # The sparse step calls this per block of rows; `after_step` records the whole batch.
        self._step_samples += projection.shape[0]
        self._step_fired[columns] = True
        return rows, columns

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return projection_values + self.bias[columns]  # ReLU is the identity on the kept (positive) entries

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor | None, codes: torch.Tensor | None) -> None:
        if codes is not None:
            self.record_firing(codes)
        else:  # a sparse step: `support` saw the codes
            self.samples_since_fired += self._step_samples
            self.samples_since_fired[self._step_fired] = 0
            self._step_samples = 0
            self._step_fired.zero_()

    def record_firing(self, codes: torch.Tensor) -> None:
        """Count samples since each latent last fired (the codes of the step just taken)."""
        self.samples_since_fired += codes.shape[0]
        self.samples_since_fired[(codes != 0).any(dim=0)] = 0

    def export(self) -> dict[str, torch.Tensor]:
        return {"b_enc": self.bias.detach().clone()}
