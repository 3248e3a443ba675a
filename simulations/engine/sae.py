"""The sparse autoencoder's linear maps (paper §3): encoder, decoder, output scale and pre-bias.

The nonlinearity and the neuron biases belong to the training method (`simulations.engine.methods`),
so that bias adaptation, TopK, L1 and JumpReLU plug into the same autoencoder.

Tied (the paper's GBA):   x_hat = sum_m a_m z_m w_m + b_pre,  projection_m = w_m . (x - b_pre)
Untied (the field's):     x_hat = sum_m z_m d_m + b_pre,      projection_m = e_m . (x - b_pre)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from theory.validation import ConfigError, check_choice, check_int, check_real

PRE_BIASES = ("learned", "median", "zero")
"""How b_pre starts and trains (`SAEConfig.pre_bias`)."""


@dataclass(frozen=True)
class SAEConfig:
    """Shape and initialisation of the autoencoder."""

    width: int = 1024
    """Number of neurons M."""
    tied: bool = True
    """One matrix W encodes and decodes (with a per-neuron output scale a), as in the paper. Flat settings
    (`RecoverConfig.from_settings`, `gba recover`) default it per method (`MethodConfig.tied_default`)."""
    initial_scale: float = 0.01
    """Initial output scale a_m (tied) or decoder row norm (untied); small a is the theory's regime."""
    normalise_rows: bool = True
    """Keep the rows of W (tied) or of the decoder (untied) at unit norm after every step
    (the theory's spherical gradient steps); the magnitude then lives in a."""
    pre_bias: str | None = None
    """b_pre: 'learned' (starts at 0 and trains), 'median' (starts at the geometric median of the first
    training batch and trains, as dictionary_learning and sparsify start their TopK SAEs' b_dec) or
    'zero' (held at 0: no pre-bias). None takes the parametrisation's: 'median' untied, as the field
    trains it, 'learned' tied, the paper's SAE. Learned from either start, an untied b_pre can drift far
    from the data (the `toy_untied` grid)."""

    def __post_init__(self):
        check_int("width", self.width, 1)
        if not isinstance(self.tied, bool):
            raise ConfigError(f"tied: must be true or false, got {self.tied!r}")
        check_real("initial_scale", self.initial_scale, 0.0, low_open=True)
        if self.pre_bias is None:
            object.__setattr__(self, "pre_bias", "learned" if self.tied else "median")
        check_choice("pre_bias", self.pre_bias, PRE_BIASES)

    def to_dict(self) -> dict:
        """The settings, JSON-ready; 'pre_bias' only when it is not 'learned', so that runs made before
        that setting existed keep the keys that hash this dict."""
        settings = dataclasses.asdict(self)
        if settings["pre_bias"] == "learned":
            del settings["pre_bias"]
        return settings

    @classmethod
    def from_dict(cls, settings: dict) -> "SAEConfig":
        """Inverse of `to_dict`: a missing 'pre_bias' is 'learned'."""
        return cls(**{"pre_bias": "learned", **settings})


class SparseAutoencoder(nn.Module):
    """Encoder/decoder weights of an SAE; `project` is the one dense matmul, `decode` maps codes back."""

    def __init__(self, config: SAEConfig, d: int, generator: torch.Generator, device="cpu"):
        super().__init__()
        self.config = config
        self.d = d
        directions = torch.randn(config.width, d, generator=generator, dtype=torch.float32)
        directions = (directions / directions.norm(dim=1, keepdim=True)).to(device)
        self.weight = nn.Parameter(directions)
        if config.tied:
            self.scale = nn.Parameter(torch.full((config.width,), config.initial_scale, device=device))
        else:
            self.decoder = nn.Parameter(directions.clone() * config.initial_scale)
        self.pre_bias = nn.Parameter(torch.zeros(d, device=device), requires_grad=config.pre_bias != "zero")
        self.points: int | None = None
        """None for one SAE; G when the parameters carry a leading axis of G SAEs (`stack`)."""

    @classmethod
    def stack(cls, saes: list["SparseAutoencoder"]) -> "SparseAutoencoder":
        """One module training G equally shaped SAEs at once: each parameter gets a leading axis of G."""
        first = saes[0]
        if any(sae.config != first.config or sae.d != first.d for sae in saes):
            raise ValueError("stack: every SAE must have the same config and dimension")
        stacked = cls.__new__(cls)
        nn.Module.__init__(stacked)
        stacked.config, stacked.d, stacked.points = first.config, first.d, len(saes)
        for name, _ in first.named_parameters():
            values = torch.stack([getattr(sae, name).detach() for sae in saes])
            setattr(stacked, name, nn.Parameter(values, requires_grad=getattr(first, name).requires_grad))
        return stacked

    @torch.no_grad()
    def unstack_into(self, saes: list["SparseAutoencoder"]) -> None:
        """Copy the parameters of each stacked SAE back into its own module."""
        for name, parameter in self.named_parameters():
            for point, sae in enumerate(saes):
                getattr(sae, name).copy_(parameter[point])

    @torch.no_grad()
    def start_pre_bias(self, x: torch.Tensor) -> None:
        """Set b_pre from the first training batch (inputs as the SAE sees them) where the config asks for it."""
        if self.config.pre_bias == "median":
            self.pre_bias.copy_(geometric_median(x))

    @property
    def width(self) -> int:
        return self.config.width

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder projections (x - b_pre) W^T, shape (batch, width), before any bias."""
        return (x - self.pre_bias.unsqueeze(-2)) @ self.weight.mT

    @property
    def decoder_weight(self) -> torch.Tensor:
        """Decoder rows, shape (width, d): a_m w_m (tied) or d_m (untied)."""
        if self.config.tied:
            return self.scale.unsqueeze(-1) * self.weight
        return self.decoder

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.decoder_weight + self.pre_bias.unsqueeze(-2)

    @torch.no_grad()
    def normalise_(self) -> None:
        """Project the rows back to the unit sphere (spherical step); a absorbs no change."""
        if not self.config.normalise_rows:
            return
        rows = self.weight if self.config.tied else self.decoder
        rows.div_(rows.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def geometric_median(points: torch.Tensor, iterations: int = 100, tolerance: float = 1e-5) -> torch.Tensor:
    """The point minimising the summed distances to `points` (..., count, d) by Weiszfeld's iteration,
    started at the mean; one median per leading index."""
    median = points.mean(dim=-2)
    for _ in range(iterations):
        weights = 1 / (points - median.unsqueeze(-2)).norm(dim=-1).clamp_min(1e-8)
        update = (weights.unsqueeze(-1) * points).sum(dim=-2) / weights.sum(dim=-1, keepdim=True)
        moved = (update - median).norm(dim=-1).max()
        median = update
        if moved < tolerance:
            break
    return median


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit norm (a zero row stays zero): the SAE's inputs ("sample and normalize X_t", Algorithm 1)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
