"""The training step's forward pass, dense or sparse (issue 6: a step near the cost of one matmul).

Only the encoder pre-activations need the dense product (x - b_pre) W^T. When a method's codes
and their gradients are exactly zero outside a small support (`Method.sparse_codes`: BA/GBA,
TopK and BatchTopK while AuxK is idle, JumpReLU with its threshold band), everything after it
needs the support alone: the decode sum_m z_m d_m, the gradient of the codes, and the gradients
of W (encoder side and, tied, decoder side), of the scale a and of b_pre. The two autograd
functions below do that in O(nnz d) instead of O(B M d), so a step costs about one dense matmul
plus the optimiser. Both passes give the same loss and gradients as the dense path up to float
rounding (tests/test_sparse_step.py).

Both forwards accept one SAE (x of shape (B, d)) or a stack of G SAEs (x of shape (G, B, d),
`SparseAutoencoder.stack`); the sparse one then works on the block-diagonal problem with rows
g*B + b and neurons g*M + m.
"""

from __future__ import annotations

from dataclasses import dataclass

import warnings

import torch
from torch.autograd import Function

from simulations.methods.base import Method
from simulations.sae import SparseAutoencoder


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The paper's 1/2 ||x_hat - x||^2, averaged over the batch (one value per stacked SAE)."""
    return 0.5 * (reconstruction - x).pow(2).sum(dim=-1).mean(dim=-1)


@dataclass
class SparseCodes:
    """The codes of a batch on their support: codes[rows[k], columns[k]] = values[k], zero elsewhere
    (the support may hold zero codes that carry a gradient: `Method.support`)."""

    rows: torch.Tensor
    """Sample index of each support entry (int64)."""
    columns: torch.Tensor
    """Neuron index of each support entry (int64)."""
    values: torch.Tensor
    """The codes on the support, with gradients."""
    shape: tuple[int, int]
    """(batch, width) of the dense code matrix."""
    projections: torch.Tensor
    """The projections w_m . (x - b_pre) on the support, with gradients (for penalties that read
    pre-activations, such as JumpReLU's L0 term)."""

    def to_dense(self) -> torch.Tensor:
        dense = self.values.new_zeros(self.shape)
        return dense.index_put((self.rows, self.columns), self.values)


@dataclass
class StepForward:
    """What the training loop needs from a forward pass."""

    loss: torch.Tensor
    """Reconstruction loss, shape () or (G,) for a stack."""
    penalty: torch.Tensor | float
    """The method's penalty (same shape as `loss`, or a number)."""
    neuron_counts: torch.Tensor
    """Active codes per neuron in this batch, shape (M,) or (G, M)."""
    projection: torch.Tensor | None
    """Detached projections for `Method.after_step`; None when `Method.support` already took its statistics."""
    codes: torch.Tensor | None
    """The step's detached dense codes for `Method.after_step` (None after a sparse step)."""


class Support:
    """Where the codes are non-zero, as CSR patterns by rows (samples) and by columns (neurons)."""

    def __init__(self, rows: torch.Tensor, columns: torch.Tensor, shape: tuple[int, int]):
        self.rows, self.columns, self.shape = rows, columns, shape
        self.row_pointers = _pointers(rows, shape[0])
        self.by_column = torch.argsort(columns, stable=True)
        self.column_pointers = _pointers(columns, shape[1])
        self.rows_by_column = rows[self.by_column]

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The (samples, neurons) sparse matrix with these values (in the order of `rows`)."""
        return _csr(self.row_pointers, self.columns, values, self.shape)

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """The (neurons, samples) transpose of `matrix(values)`."""
        return _csr(self.column_pointers, self.rows_by_column, values[self.by_column], self.shape[::-1])


def _csr(pointers, indices, values, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta": the operations used here are stable
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(pointers, indices, values, shape, check_invariants=False)


def _pointers(indices: torch.Tensor, size: int) -> torch.Tensor:
    """CSR pointers of sorted-or-permuted indices: start of each index's run."""
    pointers = torch.zeros(size + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(torch.bincount(indices, minlength=size), dim=0, out=pointers[1:])
    return pointers


class GatheredProjection(Function):
    """values_k = centred[rows_k] . weight[columns_k], read off the dense product; backward in O(nnz d)."""

    @staticmethod
    def forward(ctx, centred, weight, values, support: Support):
        ctx.save_for_backward(centred, weight)
        ctx.support = support
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        centred, weight = ctx.saved_tensors
        grad_centred = ctx.support.matrix(grad) @ weight if ctx.needs_input_grad[0] else None
        grad_weight = ctx.support.transposed(grad) @ centred if ctx.needs_input_grad[1] else None
        return grad_centred, grad_weight, None, None


class SparseDecode(Function):
    """x_hat = Z @ decoder for the sparse code matrix Z, forward and backward in O(nnz d)."""

    @staticmethod
    def forward(ctx, values, decoder, support: Support):
        ctx.save_for_backward(values, decoder)
        ctx.support = support
        return support.matrix(values) @ decoder

    @staticmethod
    def backward(ctx, grad):
        values, decoder = ctx.saved_tensors
        grad_values = grad_decoder = None
        if ctx.needs_input_grad[0]:
            # dL/dz_k = grad[rows_k] . decoder[columns_k]: the product grad @ decoder^T sampled on the support.
            grad_values = torch.sparse.sampled_addmm(ctx.support.matrix(values), grad, decoder.mT, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_decoder = ctx.support.transposed(values) @ grad
        return grad_values, grad_decoder, None


def dense_forward(sae: SparseAutoencoder, method: Method, x: torch.Tensor) -> StepForward:
    """The reference step: dense codes, dense decode, autograd through everything."""
    projection = sae.project(x)
    codes = method.encode(projection)
    reconstruction = sae.decode(codes)
    decoder = sae.decoder_weight
    penalty = method.penalty(codes, decoder.norm(dim=-1))
    penalty = penalty + method.auxiliary_loss(projection, codes, (x - reconstruction).detach(), decoder)
    return StepForward(
        loss=reconstruction_loss(reconstruction, x),
        penalty=penalty,
        neuron_counts=(codes.detach() != 0).sum(dim=-2),
        projection=projection.detach(),
        codes=codes.detach(),
    )


def sparse_forward(sae: SparseAutoencoder, method: Method, x: torch.Tensor) -> StepForward:
    """The same step from the active codes alone (needs `method.sparse_codes`).

    The projections are computed in blocks of rows (at most `BLOCK_ELEMENTS` at a time) while the
    method finds their support and takes its statistics; only the active entries are kept.
    """
    centred = x - sae.pre_bias.unsqueeze(-2)
    rows, columns, values = _support_in_blocks(sae, method, centred.detach())
    with torch.autocast(x.device.type, enabled=False):  # the sparse products stay in the parameters' dtype
        return _sparse_rest(sae, method, x, centred, rows, columns, values.to(centred.dtype))


def _sparse_rest(sae, method, x, centred, rows, columns, values) -> StepForward:
    """The sparse step after the support is known: decode, loss and penalty from the active codes."""
    width, d = sae.width, sae.d
    batch_rows = centred[..., 0].numel()
    # In a stack, neuron m of SAE g is row g*M + m of the flattened weights.
    flat_columns = columns + (rows // x.shape[-2]) * width if sae.points else columns
    support = Support(rows, flat_columns, (batch_rows, sae.weight[..., 0].numel()))
    values = GatheredProjection.apply(centred.reshape(-1, d), sae.weight.reshape(-1, d), values, support)
    codes = SparseCodes(rows, columns, method.code_values(values, columns), (batch_rows, width), values)
    decoder = sae.decoder_weight
    reconstruction = SparseDecode.apply(codes.values, decoder.reshape(-1, d), support).view_as(x)
    reconstruction = reconstruction + sae.pre_bias.unsqueeze(-2)
    neuron_counts = torch.bincount(flat_columns[codes.values.detach() != 0], minlength=support.shape[1])
    return StepForward(
        loss=reconstruction_loss(reconstruction, x),
        penalty=method.sparse_penalty(codes, decoder.norm(dim=-1)),
        neuron_counts=neuron_counts.view(sae.weight.shape[:-1]),
        projection=None,
        codes=None,
    )


BLOCK_ELEMENTS = 1 << 24
"""Projections per block of rows in the sparse forward (64 MiB of fp32). Smaller, cache-sized
blocks were 1.7-5x slower on the shared 2-core machine (many short parallel regions), so the
blocks only bound the memory of large batches."""


@torch.no_grad()
def _support_in_blocks(sae: SparseAutoencoder, method: Method, centred: torch.Tensor):
    """(rows, columns, projection values) of the support of the codes; a stack is one block."""
    while True:  # a second round only when `select_support` asks for it (it widened the support)
        selected = method.select_support(*_gathered_support(sae, method, centred))
        if selected is not None:
            return selected


def _gathered_support(sae: SparseAutoencoder, method: Method, centred: torch.Tensor):
    """`method.support` of every block of rows, with the projections on it."""
    weight = sae.weight.detach().mT
    if sae.points:
        # One mm per point: on CPU a loop of mm was ~2x faster than bmm for these shapes.
        projection = centred.new_empty(*centred.shape[:-1], sae.width)
        for point in range(sae.points):
            torch.mm(centred[point], weight[point], out=projection[point])
        rows, columns = method.support(projection)
        return rows, columns, projection.view(-1)[rows * sae.width + columns]
    step = max(1, BLOCK_ELEMENTS // sae.width)
    parts = []
    for start in range(0, centred.shape[0], step):
        projection = centred[start : start + step] @ weight
        rows, columns = method.support(projection)
        parts.append((rows + start, columns, projection[rows, columns]))
    return tuple(torch.cat(part) for part in zip(*parts))
