"""The interface every training method implements."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import torch
from torch import nn

from theory.validation import ConfigError


class MethodConfig:
    """Base of the frozen method configs: `build` makes the method for an SAE of a given width."""

    def build(self, width: int, device="cpu") -> "Method":
        raise NotImplementedError

    def check(self, method: str, width: int) -> None:
        """Checks that need the method's name or the SAE's width (raise ConfigError); none by default."""

    @classmethod
    def setting_names(cls) -> set[str]:
        """Names accepted by `from_settings`: the config's fields."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_settings(cls, settings: dict, feature_frequency: float) -> "MethodConfig":
        """The config from flat settings (grid specs, CLI); `feature_frequency` f lets settings be relative to f."""
        return cls(**settings)


def field_docs(config_class: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass (its own and inherited ones)."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


class Method(nn.Module):
    """A sparsity mechanism: projections -> codes, an optional penalty, optional out-of-band updates.

    Parameters of the method (a learned bias or threshold) are trained with the SAE's; buffers
    (an adapted bias) are not. `export` gives the SAELens JumpReLU/standard tensors of the gate.

    The training loop puts the method in training mode (`nn.Module.train()`) and evaluation puts
    it in eval mode (`.eval()`): a method whose inference rule differs from its training rule
    (BatchTopK) branches on `self.training`. `architecture` names the SAELens architecture whose
    tensors `export` gives.

    A method whose codes are exactly zero off a support it can find without gradients sets
    `sparse_codes = True` and implements `support` and `code_values`; the training loop then uses
    the sparse step (`simulations.sparse_step`) whenever the codes are sparse enough.
    """

    sparse_codes: bool = False
    """True when `support` + `code_values` give exactly the codes of `encode` (and the same gradients)."""

    architecture = "jumprelu"
    """SAELens architecture whose encoder convention `export` follows."""

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        """Codes z (batch, width) from the projections w_m . (x - b_pre)."""
        raise NotImplementedError

    def penalty(self, codes: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor | float:
        """A term added to the reconstruction loss (0 for methods without one)."""
        return 0.0

    def auxiliary_loss(
        self, projection: torch.Tensor, codes: torch.Tensor, residual: torch.Tensor, decoder: torch.Tensor
    ) -> torch.Tensor | float:
        """A loss term that needs more than the codes (0 by default).

        `projection` are the encoder projections (with gradient), `residual` is x - x_hat
        (detached), `decoder` the decoder rows (width, d). TopK's AuxK loss and JumpReLU's
        straight-through L0 term live here. Only the dense step calls it, so a method with an
        auxiliary loss reports `sparse_codes = False` while that loss is active, unless its
        `sparse_penalty` computes the same term from the support (JumpReLU).
        """
        return 0.0

    @torch.no_grad()
    def after_step(self, projection: torch.Tensor | None, codes: torch.Tensor | None) -> None:
        """Called once per step, after the optimiser, with the detached projections and codes of that
        step's batch as they were trained on (both None after a sparse step: `support` has seen them)."""

    def support(self, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns), in row-major order and without gradients, of every entry of one block of
        rows whose code or gradient can be non-zero: the non-zero codes of `encode(projection)`,
        plus any zero code a straight-through gradient reaches (JumpReLU's threshold band).
        `projection` must not be modified. Takes the statistics `after_step` needs."""
        raise NotImplementedError

    def select_support(self, rows: torch.Tensor, columns: torch.Tensor, projection_values: torch.Tensor) -> tuple | None:
        """The (rows, columns, projection_values) kept of the whole batch's `support` entries, for a
        rule that needs the whole batch (BatchTopK's top k*B); None when they were too few: the
        method has widened its `support` and the blocks are gathered again. Keeps them all by default."""
        return rows, columns, projection_values

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """The codes on the support (with gradients) from their projections; `columns` are their neurons."""
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
        """`b_enc` (and `threshold` where the gate has one) in SAELens's convention for `architecture`."""
        raise NotImplementedError


class LearnedBiasMethod(Method):
    """A method whose encoder bias b_enc is trained by the optimiser (every baseline of the field)."""

    def __init__(self, width: int, device="cpu"):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width, device=device))

    def pre_activation(self, projection: torch.Tensor) -> torch.Tensor:
        """h = w_m . (x - b_pre) + b_enc."""
        return projection + self.bias


def check_width(name: str, value: int, width: int) -> None:
    """A per-sample count (k) cannot exceed the SAE's width."""
    if value > width:
        raise ConfigError(f"{name}: must be at most the width ({width}), got {value}")
