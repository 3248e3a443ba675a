"""TopK (Makhzani & Frey 2013; Gao et al. 2024): keep the k largest pre-activations of each sample.

z = ReLU(h) on the k largest entries of h = w_m . (x - b_pre) + b_enc, 0 elsewhere; b_enc is
learned. The optional AuxK loss (Gao et al. §A.2) revives dead latents: the k_aux largest
pre-activations among the latents that have not fired for `dead_window` samples must reconstruct
the main reconstruction's residual, weighted by min(#dead / k_aux, 1) as in SAELens.

Export: SAELens's 'topk' architecture (W_enc, W_dec, b_enc, b_dec; k is `method_config.k` in
config.json). A per-sample TopK has no fixed threshold, so no `threshold` tensor is exported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from simulations.engine.methods.base import Codes, Entries, LearnedBiasMethod, MethodConfig, Projections, check_width
from theory.validation import check_int, check_real


FIELD_DEAD_WINDOW = 10_000_000
"""The field's dead-latent window in tokens (Gao et al., sparsify, dictionary_learning); also the
window of a method built from a config whose window was never resolved for a run (`for_run`)."""


@dataclass(frozen=True)
class TopKConfig(MethodConfig):
    """Per-sample TopK with the optional AuxK loss on dead latents."""

    k: int = 32
    """Active latents per sample (sparsify's and OpenAI's default 32; SAELens uses 100 for LLMs)."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. and dictionary_learning: 1/32); 0 turns AuxK off (sparsify's default)."""
    aux_k: int | None = None
    """Latents in the AuxK reconstruction; None = d/2 (SAELens, dictionary_learning)."""
    dead_window: int | None = None
    """A latent is dead when it has not fired in this many training samples. None = a tenth of the
    run, at most the field's 10M tokens (sparsify, dictionary_learning): the field's runs are 100 to
    1000 times their window, so a fixed 10M would never declare a latent dead in a shorter run."""

    def __post_init__(self):
        check_int("k", self.k, 1)
        check_real("aux_coefficient", self.aux_coefficient, 0.0)
        if self.aux_k is not None:
            check_int("aux_k", self.aux_k, 1)
        if self.dead_window is not None:
            check_int("dead_window", self.dead_window, 1)

    def check(self, method: str, width: int) -> None:
        check_width("k", self.k, width)

    @classmethod
    def recommended_learning_rate(cls, width: int) -> float:
        """sparsify's and dictionary_learning's rule for TopK and BatchTopK: 2e-4 / sqrt(width / 2^14)."""
        return 2e-4 / (width / 2**14) ** 0.5

    def for_run(self, samples: int) -> "TopKConfig":
        if self.dead_window is not None:
            return self
        return replace(self, dead_window=max(1, min(FIELD_DEAD_WINDOW, samples // 10)))

    def build(self, width: int, device="cpu") -> "TopK":
        self.check("topk", width)
        return TopK(self, width, device)


class TopK(LearnedBiasMethod):
    """Per-sample TopK gate; counts the samples since each latent last fired (for AuxK)."""

    architecture = "topk"

    def __init__(self, config: TopKConfig, width: int, device="cpu"):
        super().__init__(width, device)
        self.config = config
        self.register_buffer("samples_since_fired", torch.zeros(width, dtype=torch.int64, device=device))

    @torch.no_grad()
    def support(self, projections: Projections) -> Entries:
        parts = []
        for start, block in projections.blocks():
            top, index = torch.relu(block + self.bias).topk(self.config.k, dim=-1)  # z = ReLU(h) on the k largest
            index, order = index.sort(dim=-1)  # row-major: columns ascending within each row
            kept = (top.gather(-1, order) > 0).flatten()
            rows = torch.arange(block.shape[0], device=block.device).repeat_interleave(self.config.k)[kept]
            columns = index.flatten()[kept]
            parts.append((rows + start, columns, block[rows, columns]))
        return Entries(*(torch.cat(part) for part in zip(*parts)))

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return projection_values + self.bias[columns]  # ReLU is the identity on the kept (positive) entries

    def dead(self) -> torch.Tensor:
        """Latents that have not fired within the last `dead_window` training samples."""
        return self.samples_since_fired >= (self.config.dead_window or FIELD_DEAD_WINDOW)

    @property
    def needs_dense_step(self) -> bool:
        """AuxK's loss reads every projection of the dead latents."""
        return self.config.aux_coefficient > 0 and bool(self.dead().any())

    def loss(self, codes: Codes, residual: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor | float:
        """AuxK: the dead latents' largest pre-activations reconstruct the residual (dense step only)."""
        # The loop takes the sparse step only while no latent is dead, so it never needs AuxK.
        if not codes.dense or not self.needs_dense_step:
            return 0.0
        dead = self.dead()
        dead_count = int(dead.sum())
        aux_k = min(self.config.aux_k or max(decoder.shape[1] // 2, 1), dead_count)
        dead_pre_activation = torch.relu(codes.projections + self.bias).masked_fill(~dead, 0.0)
        top, index = dead_pre_activation.topk(aux_k, dim=-1)
        estimate = torch.zeros_like(dead_pre_activation).scatter(-1, index, top) @ decoder
        scale = min(dead_count / aux_k, 1.0)
        return self.config.aux_coefficient * scale * 0.5 * (estimate - residual).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update(self, codes: Codes) -> None:
        """Count samples since each latent last fired (the codes of the step just taken)."""
        self.samples_since_fired += codes.batch_size
        self.samples_since_fired[codes.columns[codes.values != 0]] = 0

    def export(self) -> dict[str, torch.Tensor]:
        return {"b_enc": self.bias.detach().clone()}
