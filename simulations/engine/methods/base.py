"""The interface every training method implements, and the small types it speaks in.

A method turns the encoder projections p = w_m . (x - b_pre) of a batch into codes. It answers
four questions, one hook each:

- `support(projections)`: where can a code (or its gradient) be non-zero? No gradients, no
  side effects. A method with a per-neuron threshold only defines `cutoff`.
- `code_values(projection_values, columns)`: the codes there, with gradients, elementwise.
- `loss(codes, residual, decoder)`: what it adds to the reconstruction loss (0 by default).
- `update(codes)`: what it changes after the optimiser step (a controller, a running
  threshold, dead-latent counts); nothing by default.

The training step (`simulations.engine.step`) builds both its dense reference form and its
sparse form from these hooks, so the two cannot drift apart; `encode` is the dense form, used
for evaluation. A method's trained parameters (a learned bias or threshold) train with the
SAE's; its buffers (an adapted bias) do not.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import threading
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
from torch import nn

from theory.validation import ConfigError


class MethodConfig:
    """Base of the frozen method configs: `build` makes the method for an SAE of a given width."""

    tied_default: ClassVar[bool] = False
    """Whether the method's SAE is tied where a setting leaves it out: the field trains its baselines
    untied; bias adaptation overrides this with the paper's tied SAE."""

    def build(self, width: int, device="cpu") -> "Method":
        raise NotImplementedError

    def check(self, method: str, width: int) -> None:
        """Checks that need the method's name or the SAE's width (raise ConfigError); none by default."""

    @classmethod
    def recommended_learning_rate(cls, width: int) -> float | None:
        """The learning rate the field trains this method with at `width`, where the field has a rule;
        None = the loop's default (`train.DEFAULT_LEARNING_RATE`)."""
        return None

    def for_run(self, samples: int) -> "MethodConfig":
        """This config with the settings that scale with the run's length resolved for a run of
        `samples` training samples; the config itself when none does."""
        return self

    @classmethod
    def setting_names(cls) -> set[str]:
        """Names accepted by `from_settings`: the config's fields."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_settings(cls, settings: dict, feature_frequency: float, method: str) -> "MethodConfig":
        """The config of `method` from flat settings (grid specs, the CLI, the Python API); `feature_frequency`
        f lets settings be relative to f. Settings left out take the config's defaults."""
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


class Projections:
    """The (batch, width) encoder projections of one batch, computed block by block on demand.

    The sparse step never holds the whole matrix: each pass over `blocks()` recomputes it in
    blocks of rows, and a method keeps only the entries it selects. The dense step and
    evaluation wrap a matrix they already hold (`Projections.of`).
    """

    def __init__(self, centred: torch.Tensor, weight: torch.Tensor, block_rows: int):
        self._centred, self._weight, self._block_rows = centred, weight, max(1, block_rows)
        self.batch_size, self.width = centred.shape[0], weight.shape[0]
        self.matrix: torch.Tensor | None = None
        """The whole (batch, width) matrix when it is already held (`of`), else None."""

    @classmethod
    def of(cls, projection: torch.Tensor) -> "Projections":
        """Projections already computed, as one block."""
        projections = cls.__new__(cls)
        projections.batch_size, projections.width = projection.shape
        projections.matrix = projection
        return projections

    @property
    def in_one_block(self) -> bool:
        """Whether the whole batch is one block of rows (or the matrix is already held)."""
        return self.matrix is not None or self.batch_size <= self._block_rows

    @property
    def device(self) -> torch.device:
        return (self.matrix if self.matrix is not None else self._centred).device

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, projections of a block of rows), in order of rows."""
        if self.matrix is not None:
            yield 0, self.matrix
            return
        weight = self._weight.mT
        for start in range(0, self.batch_size, self._block_rows):
            yield start, _product(self._centred[start : start + self._block_rows], weight, "row block")

    def neuron_blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first neuron, a block of neurons' projections of every row, as a (neurons, rows) matrix),
        in order of neurons, with the same memory bound as `blocks`: for statistics of each neuron
        over the batch, read along the contiguous last axis."""
        if self.matrix is not None:
            yield 0, self.matrix.mT
            return
        neurons = max(1, self._block_rows * self.width // self.batch_size)
        for start in range(0, self.width, neurons):
            yield start, _product(self._weight[start : start + neurons], self._centred.mT, "neuron block")


_SCRATCH = threading.local()
"""Memory the step's blocks are written into, one buffer per role and thread, kept from step to step:
a fresh 64 MiB block pays its page faults again (the product took 2.5x as long written into fresh
memory as into reused memory at 4096 x 4096 fp32 on the 2-core AMD EPYC). A block is consumed before
the next is asked for (every method copies the entries it keeps); a thread runs one loop at a time
(a Dask worker may run several points, each in its own thread)."""


def scratch(role: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused (rows, columns) buffer for `role`: the first rows of the largest one asked for so far."""
    rows, columns = shape
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    held = buffers.get(role)
    if held is None or held.shape[0] < rows or held.shape[1] != columns or held.dtype != dtype or held.device != device:
        held = buffers[role] = torch.empty(shape, dtype=dtype, device=device)
    return held[:rows]


def _product(left: torch.Tensor, right: torch.Tensor, role: str) -> torch.Tensor:
    """left @ right in the scratch buffer of `role`, in the dtype the plain product would have
    (bf16 under autocast, which does not cast out= calls)."""
    device = left.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.result_type(left, right)
    out = scratch(role, (left.shape[0], right.shape[1]), dtype, left.device)
    return torch.matmul(left.to(dtype), right.to(dtype), out=out)


@dataclass
class Entries:
    """Entries of a batch's (batch, width) projection matrix, in row-major order."""

    rows: torch.Tensor
    """Sample index of each entry (int64)."""
    columns: torch.Tensor
    """Neuron index of each entry (int64)."""
    projections: torch.Tensor
    """The projection w_m . (x - b_pre) at each entry."""

    def __len__(self) -> int:
        return self.rows.numel()

    def select(self, keep: torch.Tensor) -> "Entries":
        """The entries where `keep` (a boolean per entry) is true."""
        return Entries(self.rows[keep], self.columns[keep], self.projections[keep])

    def mask(self, shape) -> torch.Tensor:
        """The entries as a boolean (batch, width) matrix."""
        mask = torch.zeros(shape, dtype=torch.bool, device=self.rows.device)
        return mask.index_put_((self.rows, self.columns), torch.ones((), dtype=torch.bool, device=mask.device))


def gather(projections: Projections, cutoff: torch.Tensor, shift: torch.Tensor | None = None) -> Entries:
    """The entries whose projection (plus `shift`) exceeds `cutoff`, in row-major order: one pass.

    `cutoff` and `shift` are per neuron (a scalar cutoff applies to every neuron). A batch that
    needs several blocks is read by blocks of neurons, each a (neurons, batch) product: for a
    wide SAE, blocks of a few rows are slow matmuls, and the entries are few enough to sort.
    """
    cutoff = torch.as_tensor(cutoff, device=projections.device).expand(projections.width)
    if projections.in_one_block:
        _, block = next(projections.blocks())
        rows, columns = _above(block, cutoff, shift, reuse=projections.matrix is None)
        return Entries(rows, columns, block[rows, columns])
    parts = []
    for start, block in projections.neuron_blocks():
        neurons = slice(start, start + block.shape[0])
        neuron_shift = None if shift is None else shift[neurons].unsqueeze(1)
        local, rows = _above(block, cutoff[neurons].unsqueeze(1), neuron_shift, reuse=projections.matrix is None)
        parts.append((rows, local + start, block[local, rows]))
    rows, columns, values = (torch.cat(part) for part in zip(*parts))
    order = torch.argsort(rows * projections.width + columns)
    return Entries(rows[order], columns[order], values[order])


def _above(block: torch.Tensor, cutoff: torch.Tensor, shift: torch.Tensor | None, reuse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) where block (+ shift) > cutoff, in row-major order; `reuse`: through scratch
    memory (a computed block, bounded; not a held matrix, which may be any size)."""
    def buffer(role, dtype):
        return scratch(role, block.shape, dtype, block.device) if reuse else None

    values = block if shift is None else torch.add(block, shift, out=buffer("shifted block", torch.result_type(block, shift)))
    return true_positions(torch.gt(values, cutoff, out=buffer("block mask", torch.bool)))


def true_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the true entries of a sparse boolean matrix in row-major order, as
    `mask.nonzero(as_tuple=True)` gives them: nonzero over 8-byte words first, then over the bytes
    of the few words that hold a true entry (a pass of nonzero over every byte cost as much as
    the product itself)."""
    columns = mask.shape[1]
    if mask.numel() % 8 or not mask.is_contiguous():
        return mask.nonzero(as_tuple=True)
    candidates = mask.view(-1).view(torch.int64).nonzero().squeeze(1)
    word, byte = mask.view(-1, 8)[candidates].nonzero(as_tuple=True)
    flat = candidates[word] * 8 + byte
    return flat // columns, flat % columns


@dataclass
class Codes:
    """The codes of one batch with the projections they came from.

    Sparse form (the sparse step, and what `update` receives from either step): `values[k]` is
    the code of sample `rows[k]` at neuron `columns[k]`, zero elsewhere; every array is 1-D.
    Dense form (the dense step's `loss`): `values` and `projections` are (batch, width)
    matrices, `rows` is None and `columns` is arange(width), so a loss written with
    `columns`-indexed per-neuron quantities serves both forms.
    """

    values: torch.Tensor
    """The codes (with gradients inside the step's loss, detached in `update`)."""
    projections: torch.Tensor
    """The projections w_m . (x - b_pre) at the same entries (with gradients inside the step)."""
    columns: torch.Tensor
    """Neuron of each entry (sparse) or arange(width) (dense)."""
    rows: torch.Tensor | None
    """Sample of each entry (sparse); None in the dense form."""
    batch_size: int
    """Samples in the batch."""

    @property
    def dense(self) -> bool:
        return self.rows is None


@dataclass(frozen=True)
class FrequencyTargets:
    """What a method with target activation frequencies (BA/GBA) tells the loop and the evaluator."""

    group_of_neuron: torch.Tensor
    """Group index of each neuron."""
    targets: torch.Tensor
    """Target frequency of each group."""
    adjustable: torch.Tensor
    """Neurons whose frequency the method can still lower (False: held at a clamp)."""
    in_range: bool
    """Whether every adapted bias lies in the range the method allows."""
    updates: int
    """Controller updates made so far (how often the targets have been enforced)."""


class Method(nn.Module):
    """A sparsity mechanism plugged into the one training loop (see the module docstring).

    The loop puts the method in training mode and evaluation in eval mode: a method whose
    inference rule differs from its training rule (BatchTopK) branches on `self.training`.
    """

    architecture = "jumprelu"
    """The SAELens architecture whose tensors `export` gives."""

    needs_dense_step: bool = False
    """True while the method's loss needs every projection (TopK's AuxK with dead latents)."""

    def cutoff(self) -> torch.Tensor:
        """Per-neuron projection above which an entry is in the support (methods with a threshold gate)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither cutoff nor support")

    @torch.no_grad()
    def support(self, projections: Projections) -> Entries:
        """Every entry whose code or gradient can be non-zero: the non-zero codes, plus any zero
        code a straight-through gradient reaches. Default: the projections above `cutoff`."""
        return gather(projections, self.cutoff())

    def code_values(self, projection_values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """The codes at entries of the support, with gradients, from their projections and neurons."""
        raise NotImplementedError

    def loss(self, codes: Codes, residual: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor | float:
        """A term added to the reconstruction loss: `residual` is x - x_hat (detached), `decoder` the
        decoder rows (width, d). 0 by default."""
        return 0.0

    @torch.no_grad()
    def update(self, codes: Codes) -> None:
        """Called once per step after the optimiser, with that step's codes in sparse form (detached)."""

    @torch.no_grad()
    def calibrate(self, projections: Projections) -> float | None:
        """Called once before a fresh run's first step with that step's projections (computed only if
        read), so a method may set its state from the data (BA's calibrated start). Returns the share
        of that batch's codes that are then active, which lets the first step be sparse, or None
        (nothing set: the first step is dense)."""
        return None

    def frequency_targets(self) -> FrequencyTargets | None:
        """Groups and target frequencies, for methods that have them."""
        return None

    def export(self) -> dict[str, torch.Tensor]:
        """`b_enc` (and `threshold` where the gate has one) in SAELens's convention for `architecture`."""
        raise NotImplementedError

    def dense_codes(self, projection: torch.Tensor) -> tuple[torch.Tensor, Entries]:
        """The (batch, width) codes of `projection` (with gradients) and their support."""
        entries = self.support(Projections.of(projection.detach()))
        columns = torch.arange(projection.shape[-1], device=projection.device)
        return self.code_values(projection, columns) * entries.mask(projection.shape), entries

    def encode(self, projection: torch.Tensor) -> torch.Tensor:
        """The (batch, width) codes of `projection`: the method's inference rule in eval mode."""
        return self.dense_codes(projection)[0]


class LearnedBiasMethod(Method):
    """A method whose encoder bias b_enc is trained by the optimiser (every baseline of the field)."""

    def __init__(self, width: int, device="cpu"):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width, device=device))


def check_width(name: str, value: int, width: int) -> None:
    """A per-sample count (k) cannot exceed the SAE's width."""
    if value > width:
        raise ConfigError(f"{name}: must be at most the width ({width}), got {value}")
