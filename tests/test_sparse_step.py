import dataclasses

import numpy as np
import pytest
import torch

import simulations.engine.step as sparse_step
import simulations.engine.train as train_module
from simulations.engine.methods.base import Projections, gather, true_positions
from simulations.engine.methods.batchtopk import BatchTopKConfig
from simulations.engine.methods.bias_adaptation import BiasAdaptationConfig
from simulations.engine.methods.jumprelu import JumpReLUConfig
from simulations.engine.methods.topk import TopKConfig
from simulations.experiments.recover import RecoverConfig, run
from simulations.engine.sae import SAEConfig, SparseAutoencoder
from simulations.engine.step import dense_forward, sparse_forward
from simulations.engine.train import TrainConfig
from theory.model import FeatureModel

D, WIDTH, BATCH = 24, 384, 300


def setup(tied, activation, pre_bias, bias, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(width=WIDTH, tied=tied), D, generator)
    with torch.no_grad():
        if pre_bias:
            sae.pre_bias.copy_(0.1 * torch.randn(D, generator=generator))
        else:
            sae.pre_bias.requires_grad_(False)
        if tied:
            sae.scale.copy_(torch.rand(WIDTH, generator=generator) + 0.5)
    config = BiasAdaptationConfig.single(0.01, activation=activation, update_interval=10**9)
    methods = [config.build(WIDTH) for _ in range(2)]
    biases = bias - 0.05 * torch.rand(WIDTH, generator=generator)
    for method in methods:
        method.bias.copy_(biases)
    x = torch.randn(BATCH, D, generator=generator)
    return sae, methods, x / x.norm(dim=1, keepdim=True)


def gradients(forward, sae, method, x):
    sae.zero_grad(set_to_none=True)
    result = forward(sae, method, x)
    (result.loss + result.penalty).sum().backward()
    method.update(result.codes)
    return result, {name: p.grad.clone() for name, p in sae.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
@pytest.mark.parametrize("pre_bias", [True, False])
@pytest.mark.parametrize("bias", [-0.45, -0.3, -0.12])  # about 0.1 %, 2 % and 20 % of codes active
def test_sparse_step_gradients_equal_the_dense_step(tied, activation, pre_bias, bias, monkeypatch):
    monkeypatch.setattr(sparse_step, "BLOCK_ELEMENTS", 64 * WIDTH)  # several blocks of rows
    sae, (dense_method, sparse_method), x = setup(tied, activation, pre_bias, bias)
    dense, dense_gradients = gradients(dense_forward, sae, dense_method, x)
    sparse, sparse_gradients = gradients(sparse_forward, sae, sparse_method, x)
    assert int(dense.neuron_counts.sum()) > 0
    assert torch.equal(dense.neuron_counts, sparse.neuron_counts)
    assert torch.allclose(dense.loss, sparse.loss, rtol=1e-6, atol=0)
    assert set(dense_gradients) == set(sparse_gradients) == ({"weight", "scale" if tied else "decoder"} | ({"pre_bias"} if pre_bias else set()))
    for name, expected in dense_gradients.items():
        error = (sparse_gradients[name] - expected).norm() / expected.norm()
        assert error <= 1e-5, (name, float(error))
    # The controller's statistics, taken inside the sparse forward, are the dense path's exactly.
    dense_controller, sparse_controller = dense_method.controller, sparse_method.controller
    assert torch.equal(dense_controller.positive_counts, sparse_controller.positive_counts)
    # Algorithm 2 reads the largest pre-activation only where it is positive.
    assert torch.equal(dense_controller.largest.clamp_min(0), sparse_controller.largest.clamp_min(0))
    assert dense_controller.samples == sparse_controller.samples == BATCH


def test_sparse_step_updates_the_biases_like_the_dense_step():
    sae, _, x = setup(True, "jumprelu", True, -0.2)
    config = BiasAdaptationConfig.single(0.005, update_interval=2 * BATCH)
    dense_method, sparse_method = config.build(WIDTH), config.build(WIDTH)
    for _ in range(4):
        for forward, method in ((dense_forward, dense_method), (sparse_forward, sparse_method)):
            result = forward(sae, method, x)
            method.update(result.codes)
        assert torch.equal(dense_method.bias, sparse_method.bias)
    assert dense_method.controller.updates == sparse_method.controller.updates == 2
    assert (sparse_method.bias < 0).any()


def small_run(sparse: bool, activation="jumprelu", tied=True):
    model = FeatureModel(n=64, d=32, sparsity=2, seed=1)
    return RecoverConfig(
        model=model,
        # b_pre from 0 for both parametrisations: the step with a non-zero b_pre is compared above.
        sae=SAEConfig(width=256, tied=tied, pre_bias="learned"),
        method="ba",
        method_config=BiasAdaptationConfig.single(2 * model.feature_frequency, activation=activation),
        train=TrainConfig(steps=150, batch_size=512, device="cpu", sparse_step=sparse, sparse_max_density=1.0, log_every=25),
        seed=1,
    )


@pytest.mark.parametrize("activation, tied", [("jumprelu", True), ("relu", False)])
def test_training_with_the_sparse_step_gives_the_dense_result(activation, tied, monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "sparse_forward", lambda *args: calls.append(1) or sparse_forward(*args))
    dense = run(small_run(False, activation, tied))
    assert not calls
    sparse = run(small_run(True, activation, tied))
    assert len(calls) == 150  # sparse_max_density = 1 takes the sparse step even while codes are dense
    # Per step the two agree to ~1e-7 (test above); Adam's normalised update turns rounding in
    # near-zero gradient entries into differences up to the learning rate (3e-3), and a jumprelu
    # gate flip can follow, so the trajectories agree to a few 1e-3, not bit for bit.
    np.testing.assert_allclose(sparse.sae.decoder_weight.detach(), dense.sae.decoder_weight.detach(), atol=5e-3)
    np.testing.assert_allclose(sparse.method.bias, dense.method.bias, atol=1e-3)
    np.testing.assert_allclose(sparse.history["loss"], dense.history["loss"], rtol=5e-3)
    for key in ("frr_0.8", "mean_max_cosine", "l0", "dead_fraction", "explained_variance"):
        assert sparse.metrics[key] == pytest.approx(dense.metrics[key], rel=2e-3, abs=1e-3), key


def test_sparse_settings_are_validated():
    with pytest.raises(Exception, match="sparse_max_density"):
        TrainConfig(sparse_max_density=1.5)
    with pytest.raises(Exception, match="sparse_step"):
        TrainConfig(sparse_step="yes")
    assert dataclasses.replace(TrainConfig(), sparse_step=False).sparse_step is False


@pytest.mark.parametrize("k", [2, 7])
def test_topk_sparse_step_gradients_and_firing_equal_the_dense_step(k, monkeypatch):
    monkeypatch.setattr(sparse_step, "BLOCK_ELEMENTS", 64 * WIDTH)  # several blocks of rows
    sae, _, x = setup(True, "jumprelu", True, -0.2)
    config = TopKConfig(k=k, dead_window=10**9)
    dense_method, sparse_method = config.build(WIDTH), config.build(WIDTH)
    bias = 0.2 * torch.randn(WIDTH, generator=torch.Generator().manual_seed(5)) - 0.7  # some rows have < k positive
    grads = {}
    for name, forward, method in (("dense", dense_forward, dense_method), ("sparse", sparse_forward, sparse_method)):
        with torch.no_grad():
            method.bias.copy_(bias)
        assert not method.needs_dense_step
        sae.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        result = forward(sae, method, x)
        (result.loss + result.penalty).sum().backward()
        method.update(result.codes)
        grads[name] = {"bias": method.bias.grad.clone(), **{n: p.grad.clone() for n, p in sae.named_parameters()}}
        grads[name + "_counts"] = result.neuron_counts
    assert torch.equal(grads["dense_counts"], grads["sparse_counts"])
    assert 0 < int(grads["dense_counts"].sum()) < k * BATCH  # the ReLU dropped some of the k
    for name, expected in grads["dense"].items():
        error = (grads["sparse"][name] - expected).norm() / expected.norm()
        assert error <= 1e-5, (name, float(error))
    assert torch.equal(dense_method.samples_since_fired, sparse_method.samples_since_fired)


def test_topk_takes_the_dense_step_while_auxk_is_active():
    method = TopKConfig(k=2, dead_window=10).build(8)
    assert not method.needs_dense_step
    method.samples_since_fired[3] = 10  # latent 3 is dead: AuxK needs every projection
    assert method.needs_dense_step
    without_auxk = TopKConfig(k=2, dead_window=10, aux_coefficient=0.0).build(8)
    without_auxk.samples_since_fired[3] = 10
    assert not without_auxk.needs_dense_step


def compare_steps(config, prepare_method, monkeypatch, steps=1):
    """Dense and sparse steps of `config`'s method on the same SAE and batch: gradients of every
    parameter (SAE and method), active counts and the methods' state after `update`."""
    monkeypatch.setattr(sparse_step, "BLOCK_ELEMENTS", 64 * WIDTH)  # several blocks of rows
    sae, _, x = setup(True, "jumprelu", True, -0.2)
    results = {}
    for name, forward in (("dense", dense_forward), ("sparse", sparse_forward)):
        method = config.build(WIDTH)
        prepare_method(method)
        assert not method.needs_dense_step
        for _ in range(steps):
            sae.zero_grad(set_to_none=True)
            method.zero_grad(set_to_none=True)
            result = forward(sae, method, x)
            (result.loss + result.penalty).sum().backward()
            method.update(result.codes)
        gradients = {n: p.grad.clone() for n, p in [*sae.named_parameters(), *method.named_parameters()]}
        results[name] = (result, gradients, method)
    (dense, dense_gradients, dense_method), (sparse, sparse_gradients, sparse_method) = results["dense"], results["sparse"]
    assert torch.equal(dense.neuron_counts, sparse.neuron_counts)
    assert torch.allclose(dense.loss + dense.penalty, sparse.loss + sparse.penalty, rtol=1e-6, atol=0)
    assert set(dense_gradients) == set(sparse_gradients)
    for name, expected in dense_gradients.items():
        error = (sparse_gradients[name] - expected).norm() / expected.norm()
        assert error <= 1e-5, (name, float(error))
    return dense, dense_method, sparse_method


@pytest.mark.parametrize("target_l0", [None, 3.0])
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_jumprelu_sparse_step_gradients_equal_the_dense_step(target_l0, threshold, monkeypatch):
    config = JumpReLUConfig(l0_coefficient=0.05, target_l0=target_l0, initial_threshold=threshold, bandwidth=0.05)

    def spread_thresholds(method):
        with torch.no_grad():
            method.bias.copy_(0.05 * torch.randn(WIDTH, generator=torch.Generator().manual_seed(3)))

    dense, method, _ = compare_steps(config, spread_thresholds, monkeypatch)
    # The straight-through estimate reached theta through zero codes inside the band, too.
    with torch.no_grad():
        columns = dense.codes.columns
        pre_activation = dense.codes.projections + method.bias[columns]
        threshold = method.threshold[columns]
        inside_band = ((pre_activation - threshold).abs() < config.bandwidth / 2) & (pre_activation <= threshold)
    assert int(inside_band.sum()) > 0
    assert 0 < int(dense.neuron_counts.sum()) < 0.2 * BATCH * WIDTH


def count_rounds(monkeypatch) -> list:
    """Records each pass of the sparse step over its blocks of projections (of rows or of neurons)."""
    rounds = []

    def counting(read):
        def counted(projections):
            if projections.matrix is None:  # computed block by block: the sparse step's
                rounds.append(1)
            return read(projections)
        return counted

    for name in ("blocks", "neuron_blocks"):
        monkeypatch.setattr(Projections, name, counting(getattr(Projections, name)))
    return rounds


# The previous step's smallest kept activation sets the floor: 0; 0.3 (enough candidates above
# 0.27: the batch's k*B-th activation is about 0.5); 5 (too few: the blocks are gathered again with floor 0).
@pytest.mark.parametrize("last_smallest, rounds_per_step", [(0.0, 1), (0.3, 1), (5.0, 2)])
@pytest.mark.parametrize("k", [2, 7])
def test_batchtopk_sparse_step_keeps_the_dense_top_kb(last_smallest, rounds_per_step, k, monkeypatch):
    config = BatchTopKConfig(k=k, dead_window=10**9)
    rounds = count_rounds(monkeypatch)

    def set_threshold(method):
        with torch.no_grad():
            method.bias.copy_(0.2 * torch.randn(WIDTH, generator=torch.Generator().manual_seed(5)) - 0.1)
            method.threshold.fill_(last_smallest)
            method.threshold_steps.fill_(int(last_smallest > 0))
        method._last_smallest = last_smallest

    dense, dense_method, sparse_method = compare_steps(config, set_threshold, monkeypatch, steps=1)
    assert len(rounds) == rounds_per_step
    assert int(dense.neuron_counts.sum()) == k * BATCH
    assert torch.equal(dense_method.samples_since_fired, sparse_method.samples_since_fired)
    assert torch.allclose(dense_method.threshold, sparse_method.threshold, rtol=1e-6)


def test_batchtopk_sparse_step_keeps_every_positive_code_when_fewer_than_kb(monkeypatch):
    def few_positive(method):
        with torch.no_grad():
            method.bias.fill_(-0.6)  # about 0.1 % of activations positive, far fewer than k*B
            method.threshold.fill_(0.2)
            method.threshold_steps.fill_(1)
        method._last_smallest = 0.2

    rounds = count_rounds(monkeypatch)
    dense, *_ = compare_steps(BatchTopKConfig(k=7, dead_window=10**9), few_positive, monkeypatch)
    assert len(rounds) == 2  # floor 0.18 left too few candidates
    assert 0 < int(dense.neuron_counts.sum()) < 7 * BATCH


@pytest.mark.parametrize("shifted", [False, True])
def test_gather_by_blocks_of_neurons_finds_the_entries_of_the_whole_matrix_in_row_major_order(shifted):
    generator = torch.Generator().manual_seed(3)
    centred, weight = torch.randn(BATCH, D, generator=generator), torch.randn(WIDTH, D, generator=generator) / 3
    cutoff, shift = 3.0 + torch.rand(WIDTH, generator=generator), (torch.rand(WIDTH, generator=generator) if shifted else None)
    lazy = Projections(centred, weight, block_rows=50)  # several blocks: read as 50 x 384 / 300 = 64 neurons a block
    assert not lazy.in_one_block and len(list(lazy.neuron_blocks())) == 6
    whole = gather(Projections.of(centred @ weight.T), cutoff, shift)
    blocked = gather(lazy, cutoff, shift)
    assert 0 < len(whole) < 0.1 * BATCH * WIDTH
    assert torch.equal(blocked.rows, whole.rows) and torch.equal(blocked.columns, whole.columns)
    torch.testing.assert_close(blocked.projections, whole.projections)


@pytest.mark.parametrize("shape", [(16, 64), (7, 13), (1, 8), (40, 200)])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.3, 1.0])
def test_true_positions_are_nonzeros_in_row_major_order(shape, density):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(7)) < density
    rows, columns = true_positions(mask)
    expected_rows, expected_columns = mask.nonzero(as_tuple=True)
    assert torch.equal(rows, expected_rows) and torch.equal(columns, expected_columns)


def test_blocks_of_projections_are_written_into_reused_memory():
    generator = torch.Generator().manual_seed(4)
    centred, weight = torch.randn(100, D, generator=generator), torch.randn(WIDTH, D, generator=generator)
    first = [block.data_ptr() for _, block in Projections(centred, weight, block_rows=30).neuron_blocks()]
    second = [block.data_ptr() for _, block in Projections(centred, weight, block_rows=30).neuron_blocks()]
    assert len(set(first)) == 1 and first == second
    # The values are each block's own: the last block read equals its slice of the whole product.
    *_, (start, block) = Projections(centred, weight, block_rows=30).neuron_blocks()
    torch.testing.assert_close(block, weight[start:] @ centred.T)


def test_threads_write_their_blocks_into_memory_of_their_own():
    import threading

    generator = torch.Generator().manual_seed(4)
    centred, weight = torch.randn(100, D, generator=generator), torch.randn(WIDTH, D, generator=generator)
    pointers, both_read = [], threading.Barrier(2)

    def read_blocks():
        pointers.append({block.data_ptr() for _, block in Projections(centred, weight, block_rows=30).neuron_blocks()})
        both_read.wait(timeout=30)  # each thread's buffer lives until both have read

    threads = [threading.Thread(target=read_blocks) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pointers) == 2 and pointers[0].isdisjoint(pointers[1])


def test_a_bf16_block_shifted_by_fp32_biases_is_compared_in_fp32():
    """Under autocast the blocks are bf16 while BatchTopK's shift (its learned biases) is fp32."""
    generator = torch.Generator().manual_seed(6)
    centred, weight = torch.randn(100, D, generator=generator), torch.randn(WIDTH, D, generator=generator) / 3
    shift, cutoff = 0.1 * torch.randn(WIDTH, generator=generator), torch.full((WIDTH,), 1.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blocked = gather(Projections(centred, weight, block_rows=30), cutoff, shift)
        # The same bf16 blocks, kept: the whole (batch, width) matrix the step never holds.
        whole = torch.cat([block.clone() for _, block in Projections(centred, weight, block_rows=30).neuron_blocks()]).T
    rows, columns = (whole + shift > cutoff).nonzero(as_tuple=True)
    assert len(rows) > 0 and blocked.projections.dtype == torch.bfloat16
    assert torch.equal(blocked.rows, rows) and torch.equal(blocked.columns, columns)
