"""SynthSAEBench-style worlds (SAELens's `sae_lens.synthetic`) as a data source for runs and grids.

A run with `data = "synthsaebench:NAME"` trains on activations drawn from a `SyntheticModel`:
Zipf firing probabilities, a low-rank Gaussian-copula correlation, a hierarchy with mutually
exclusive children and a constant offset, x = h D + b (Chanin et al., arXiv 2602.14687). NAME is
a world of `WORLDS` or a directory written by `SyntheticModel.save`. `WorldData` has the interface
of `theory.model.SyntheticData` (features, `sample`, `batch`, `stream`), so training, evaluation and
the grid's conditions run unchanged; `saelens_evaluation` adds SAELens's own ground-truth metrics.

Needs the optional extra `sae-lens` (`pip install -e ".[saelens]"`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from theory.model import Batch, normalise_rows
from theory.validation import ConfigError

PLANTED = "planted"
"""The paper's planted model (`theory.model.SyntheticData`), the default data source."""
PREFIX = "synthsaebench"
"""Data sources `synthsaebench[:NAME]` draw from a SAELens synthetic world."""
DEFAULT_WORLD = "small"
"""The world `synthsaebench` alone names."""
SAMPLE_CHUNK = 8192
"""Samples drawn from SAELens at once (its dense (chunk, n) feature matrix bounds the memory)."""
L0_SAMPLES = 65536
"""Samples on which a world's true L0 is measured (the s that its f = s / n stands for)."""


def _world_config(num_features, hidden_dim, roots, depth, rank, seed):
    """SynthSAEBench-16k's laws (Zipf exponent 0.5 from 0.4 down to 5e-4, mutually exclusive
    children with branching factor 4, low-rank correlation at scale 0.1, offset of norm 1), at a size."""
    from sae_lens.synthetic import (
        HierarchyConfig,
        LowRankCorrelationConfig,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    return SyntheticModelConfig(
        num_features=num_features,
        hidden_dim=hidden_dim,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=5e-4),
        hierarchy=HierarchyConfig(total_root_nodes=roots, branching_factor=4, max_depth=depth,
                                  mutually_exclusive_portion=1.0),
        correlation=LowRankCorrelationConfig(rank=rank, correlation_scale=0.1),
        seed=seed,
    )


WORLDS = {
    "tiny": functools.partial(_world_config, 256, 32, 4, 2, 4),
    "small": functools.partial(_world_config, 2048, 128, 16, 2, 8),
    "16k": functools.partial(_world_config, 16384, 768, 128, 3, 25),
}
"""Registered worlds: name -> (seed -> `SyntheticModelConfig`). 'tiny' (256 features in 32
dimensions, true L0 about 2.9) is for tests; 'small' (2,048 in 128, true L0 about 10.6) is the
CPU-sized world; '16k' has SynthSAEBench-16k's sizes and laws (16,384 in 768; a GPU world) but is
built here from its published parameters, not downloaded, and without its orthogonalisation: its
true L0 is about 13.5, not the benchmark's 34, since those parameters do not say how the benchmark
offsets the hierarchy's gating of children."""


def parse_data(text) -> str:
    """The canonical form of a data source: 'planted' or 'synthsaebench:NAME' (a directory as given)."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"data: must be 'planted' or 'synthsaebench[:WORLD]', got {text!r}")
    if text == PLANTED:
        return text
    prefix, _, name = text.partition(":")
    if prefix != PREFIX:
        raise ConfigError(f"data: must be 'planted' or 'synthsaebench[:WORLD]' (WORLD one of "
                          f"{', '.join(WORLDS)} or a saved SyntheticModel directory), got {text!r}")
    name = name or DEFAULT_WORLD
    if name not in WORLDS and not (Path(name) / "synthetic_model_config.json").is_file():
        raise ConfigError(f"data: {text!r} names no world: use one of {', '.join(WORLDS)} or a directory "
                          f"written by SyntheticModel.save (with synthetic_model_config.json)")
    return f"{PREFIX}:{name}"


def is_world(data: str) -> bool:
    return data != PLANTED


@contextlib.contextmanager
def _seeded(seed: int):
    """SAELens draws from torch's global generator: fork it, so sampling touches no other state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_world(data: str, seed: int):
    """The `SyntheticModel` of a data source (cached per process). A registered world is built from a
    seed derived from `seed` (the run's feature seed): SAELens seeds torch's global generator with it,
    and the SAE's initialisation seeds torch with the run's seed, so using `seed` itself would draw
    the initial decoder equal to the world's features."""
    return _load_world(parse_data(data), int(np.random.SeedSequence([seed, 0]).generate_state(1)[0]))


@functools.lru_cache(maxsize=4)
def _load_world(data: str, seed: int):
    try:
        from sae_lens.synthetic import SyntheticModel
    except ImportError:
        raise ConfigError(f"data: {data!r} needs SAELens: pip install -e \".[saelens]\"") from None
    name = data.partition(":")[2]
    if name in WORLDS:
        return SyntheticModel(WORLDS[name](seed))
    return SyntheticModel.load_from_disk(name)


@functools.lru_cache(maxsize=4)
def world_summary(data: str, seed: int) -> dict:
    """n, d, the true L0 (mean active features per sample) and each feature's firing frequency,
    largest first, all measured on `L0_SAMPLES` samples of a world."""
    world = load_world(data, seed)
    counts = torch.zeros(world.cfg.num_features, dtype=torch.float64)
    with _seeded(seed):
        for _ in range(L0_SAMPLES // SAMPLE_CHUNK):
            counts += (world.activation_generator.sample(SAMPLE_CHUNK) > 0).sum(0).double().cpu()
    frequencies = np.sort(counts.numpy() / L0_SAMPLES)[::-1]
    return {"n": world.cfg.num_features, "d": world.cfg.hidden_dim, "true_l0": float(frequencies.sum()),
            "frequencies": frequencies}


def width_l0(data: str, seed: int, width: int) -> float:
    """The L0 of an SAE of `width` neurons that holds the world's `width` most frequent features, one
    per neuron: the sum of their frequencies (the true L0 once the width reaches n)."""
    return float(world_summary(data, seed)["frequencies"][:width].sum())


class WorldData:
    """A SAELens synthetic world with `SyntheticData`'s interface: x = h D + b, ground truth h."""

    def __init__(self, data: str, seed: int):
        self.data = parse_data(data)
        self.world = load_world(self.data, seed)
        self.features = normalise_rows(self.world.feature_dict.feature_vectors.detach().cpu().numpy())

    def sample(self, num_samples: int, rng: np.random.Generator) -> Batch:
        """`num_samples` samples with their ground-truth codes, drawn in chunks of `SAMPLE_CHUNK`."""
        xs, codes = [], []
        with _seeded(int(rng.integers(2**63 - 1))):
            for start in range(0, num_samples, SAMPLE_CHUNK):
                x, h = self.world.sample_with_features(min(SAMPLE_CHUNK, num_samples - start))
                xs.append(x.float().cpu().numpy())
                codes.append(sp.csr_matrix(h.float().cpu().numpy()))
        return Batch(x=np.concatenate(xs), codes=sp.vstack(codes, format="csr"))

    def batch(self, index: int, batch_size: int, seed: int) -> Batch:
        """Batch number `index` of the stream `seed`: the same (seed, index) always gives the same batch."""
        return self.sample(batch_size, np.random.default_rng([seed, 1, index]))

    def stream(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """Endless batches `start, start+1, ...` of the stream `seed`."""
        index = start
        while True:
            yield self.batch(index, batch_size, seed)
            index += 1


def saelens_evaluation(result, num_samples: int, seed: int) -> dict:
    """SAELens's ground-truth evaluation (`eval_sae_on_synthetic_data`) of a run's SAE, exported in
    SAELens's format and loaded by SAELens itself: MCC, uniqueness, precision/recall/F1 of latents
    as feature detectors, explained variance, L0, true L0, dead latents, shrinkage."""
    from safetensors.numpy import save_file
    from sae_lens import SAE
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    from simulations.experiments.export import export_saelens, sae_tensors

    with tempfile.TemporaryDirectory() as directory:
        run_dir = Path(directory)
        save_file(sae_tensors(result.sae, result.method), str(run_dir / "sae.safetensors"))
        (run_dir / "config.json").write_text(json.dumps(result.config.to_dict()))
        export_saelens(run_dir, run_dir / "saelens")
        sae = SAE.load_from_disk(str(run_dir / "saelens"), device="cpu")
    world = result.data.world
    with _seeded(seed):
        evaluation = eval_sae_on_synthetic_data(sae, world.feature_dict, world.activation_generator,
                                                num_samples=num_samples, batch_size=SAMPLE_CHUNK)
    return {f"saelens_{name.removeprefix('classification/')}": float(value)
            for name, value in evaluation.to_log_dict().items()}
