"""The training step's forward pass, in a dense reference form and a sparse form.

Only the encoder pre-activations need the dense product (x - b_pre) W^T. Every method says where
its codes and their gradients can be non-zero (`Method.support`), so everything after that
product needs the support alone: the decode sum_m z_m d_m, the gradient of the codes, and the
gradients of W (encoder side and, tied, decoder side), of the scale a and of b_pre. The two
autograd functions below do that in O(nnz d) instead of O(B M d), so a step costs about one dense
matmul plus the optimiser. The dense form runs autograd through everything and is the reference:
both give the same loss and gradients up to float rounding (tests/test_sparse_step.py).

Both forms accept one SAE (x of shape (B, d)) or a stack of G SAEs (x of shape (G, B, d),
`SparseAutoencoder.stack`, with a `MethodStack`); the sparse one then works on the
block-diagonal problem with rows g*B + b and neurons g*M + m.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.autograd import Function

from simulations.engine.methods.base import Codes, Method, Projections
from simulations.engine.sae import SparseAutoencoder
from simulations.engine.stack import StackedProjections


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The paper's 1/2 ||x_hat - x||^2, averaged over the batch (one value per stacked SAE)."""
    return 0.5 * (reconstruction - x).pow(2).sum(dim=-1).mean(dim=-1)


@dataclass
class StepForward:
    """What the training loop needs from a forward pass."""

    loss: torch.Tensor
    """Reconstruction loss, shape () or (G,) for a stack."""
    penalty: torch.Tensor | float
    """The method's loss term (same shape as `loss`, or a number)."""
    neuron_counts: torch.Tensor
    """Active codes per neuron in this batch, shape (M,) or (G, M)."""
    codes: Codes
    """The step's codes in sparse form, detached, for `Method.update`."""


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
    values, entries = method.dense_codes(projection)
    reconstruction = sae.decode(values)
    batch = x.shape[-2]
    codes = Codes(values, projection, torch.arange(sae.width, device=x.device), None, batch)
    penalty = method.loss(codes, (x - reconstruction).detach(), sae.decoder_weight)
    # The same entries in sparse form: a stack's flat columns are g*M + m of its (G*B, M) rows.
    columns = entries.columns - (entries.rows // batch) * sae.width if sae.points else entries.columns
    return StepForward(
        loss=reconstruction_loss(reconstruction, x),
        penalty=penalty,
        neuron_counts=(values.detach() != 0).sum(dim=-2),
        codes=Codes(
            values.detach().reshape(-1, sae.width)[entries.rows, columns],
            entries.projections, entries.columns, entries.rows, batch,
        ),
    )


def sparse_forward(sae: SparseAutoencoder, method: Method, x: torch.Tensor) -> StepForward:
    """The same step from the support alone.

    The method finds its support on projections computed in blocks of rows (at most
    `BLOCK_ELEMENTS` at a time); only the entries it keeps are stored.
    """
    centred = x - sae.pre_bias.unsqueeze(-2)
    entries = method.support(block_projections(sae, centred.detach()))
    with torch.autocast(x.device.type, enabled=False):  # the sparse products stay in the parameters' dtype
        d, batch = sae.d, x.shape[-2]
        rows, columns = entries.rows, entries.columns
        support = Support(rows, columns, (centred[..., 0].numel(), sae.weight[..., 0].numel()))
        projections = GatheredProjection.apply(
            centred.reshape(-1, d), sae.weight.reshape(-1, d), entries.projections.to(centred.dtype), support
        )
        values = method.code_values(projections, columns)
        decoder = sae.decoder_weight
        reconstruction = SparseDecode.apply(values, decoder.reshape(-1, d), support).view_as(x)
        reconstruction = reconstruction + sae.pre_bias.unsqueeze(-2)
        codes = Codes(values, projections, columns, rows, batch)
        neuron_counts = torch.bincount(columns[values.detach() != 0], minlength=support.shape[1])
        return StepForward(
            loss=reconstruction_loss(reconstruction, x),
            penalty=method.loss(codes, (x - reconstruction).detach(), decoder),
            neuron_counts=neuron_counts.view(sae.weight.shape[:-1]),
            codes=Codes(values.detach(), projections.detach(), columns, rows, batch),
        )


BLOCK_ELEMENTS = 1 << 24
"""Projections per block of rows in the sparse step (64 MiB of fp32). Smaller, cache-sized
blocks were 1.7-5x slower on the shared 2-core machine (many short parallel regions), so the
blocks only bound the memory of large batches."""


def block_projections(sae: SparseAutoencoder, centred: torch.Tensor) -> Projections:
    """The projections of `centred` (x - b_pre), computed by blocks of rows when a method reads them."""
    weight = sae.weight.detach()
    rows = BLOCK_ELEMENTS // sae.width
    if sae.points:
        return StackedProjections([Projections(centred[point], weight[point], rows) for point in range(sae.points)])
    return Projections(centred, weight, rows)
