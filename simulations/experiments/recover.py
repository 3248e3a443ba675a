"""One recovery experiment: plant features, train an SAE on them, measure what it found.

A grid point is one `RecoverConfig`; `run` is the whole experiment and `save` writes it to disk
(features, SAE weights in SAELens's names and layout, the full config and the metrics).
`run_stack` trains several points of equal shapes as one stacked computation
(`simulations.engine.stack`), each with its own data stream and its own method.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import save_file

from simulations.engine.evaluate import evaluate
from simulations.engine.methods import METHODS, MethodConfig
from simulations.engine.methods.base import Method
from simulations.engine.methods.bias_adaptation import CALIBRATED
from simulations.engine.recovery import best_cosines
from simulations.engine.sae import SAEConfig, SparseAutoencoder
from simulations.engine.stack import MethodStack
from simulations.engine.step import BLOCK_ELEMENTS
from simulations.engine.train import DEFAULT_LEARNING_RATE, Checkpoint, TrainConfig, resolve_device, train
from simulations.experiments.export import sae_tensors
from simulations.experiments.files import atomic_path, read_checkpoint, save_atomically, write_atomically
from simulations.experiments.worlds import (PLANTED, WorldData, is_world, parse_data, saelens_evaluation,
                                             width_l0, world_summary)
from theory.metrics import DENSE_MATCHING_ENTRIES
from theory.model import FeatureModel, SyntheticData
from theory.validation import MAX_SEED, ConfigError, check_choice, check_int, multiple_setting


@dataclass(frozen=True)
class RecoverConfig:
    """Everything that defines one run; equal configs give bit-identical results on CPU."""

    model: FeatureModel = field(default_factory=FeatureModel)
    """The statistical model (n, d, s, coefficients, ...)."""
    sae: SAEConfig = field(default_factory=SAEConfig)
    """Width and parametrisation of the SAE."""
    method: str = "ba"
    """Training method, a key of `simulations.engine.methods.METHODS`."""
    method_config: MethodConfig | None = None
    """Settings of the method (for BA/GBA: targets, gamma, epsilon, update interval); None takes the
    method's defaults for this model (BA/GBA: `bias_adaptation.DEFAULT_TARGETS`). Settings that scale
    with the run (TopK's dead window) are resolved for `train`'s samples (`MethodConfig.for_run`)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimiser settings."""
    seed: int = 0
    """Seed of the SAE initialisation and of the data stream (V has its own, `model.seed`)."""
    eval_samples: int = 16384
    """Fresh samples for the final evaluation (L0, dead fraction, EV, frequencies)."""
    data: str = PLANTED
    """Where the samples come from: 'planted' (the paper's model, `model`) or 'synthsaebench[:WORLD]'
    (a SAELens synthetic world, `simulations.experiments.worlds`; then `model` holds the world's n
    and d, its seed and its true L0 rounded as s, so that f = s / n)."""

    def __post_init__(self):
        check_choice("method", self.method, tuple(METHODS))
        object.__setattr__(self, "data", parse_data(self.data))
        if is_world(self.data):
            world = world_summary(self.data, self.model.seed)
            if (self.model.n, self.model.d) != (world["n"], world["d"]):
                raise ConfigError(f"data: the world {self.data!r} has n = {world['n']}, d = {world['d']}; "
                                  f"the model says n = {self.model.n}, d = {self.model.d}")
        if self.method_config is None:
            default = METHODS[self.method].from_settings({}, self.model.feature_frequency, self.method)
            object.__setattr__(self, "method_config", default)
        if not isinstance(self.method_config, METHODS[self.method]):
            raise ConfigError(f"method_config: method {self.method!r} needs a {METHODS[self.method].__name__}")
        object.__setattr__(self, "method_config", self.method_config.for_run(self.train.steps * self.train.batch_size))
        if self.train.learning_rate is None:
            rate = METHODS[self.method].recommended_learning_rate(self.sae.width) or DEFAULT_LEARNING_RATE
            object.__setattr__(self, "train", dataclasses.replace(self.train, learning_rate=rate))
        self.method_config.check(self.method, self.sae.width)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("eval_samples", self.eval_samples, 1)

    def to_dict(self) -> dict:
        """Every setting, nested by part, JSON-ready ('data' only when it is not the planted model,
        so that planted runs keep the keys that hash this dict; the SAE's as `SAEConfig.to_dict`)."""
        settings = {
            "model": dataclasses.asdict(self.model),
            "sae": self.sae.to_dict(),
            "method": self.method,
            "method_config": dataclasses.asdict(self.method_config),
            "train": dataclasses.asdict(self.train),
            "seed": self.seed,
            "eval_samples": self.eval_samples,
        }
        if is_world(self.data):
            settings["data"] = self.data
        return settings

    @classmethod
    def from_settings(cls, settings: dict) -> "RecoverConfig":
        """Build a config from one flat mapping of settings, as grid specs and tables use.

        Keys are the field names of `FeatureModel` (`s` is short for `sparsity`), `SAEConfig`,
        `TrainConfig` and the method's config class (its `setting_names()`), plus `method`, `seed`
        (the run's seed, also V's unless `feature_seed` is given), `feature_seed` and
        `eval_samples` and `data` (with a SynthSAEBench world, n, d and s are the world's and the
        planted model's other settings are refused). `tied` defaults to the method's (`tied_default`: BA/GBA tied as in the paper, the
        baselines untied as the field trains them), and `learning_rate` to the method's recommended
        rate where it has one (`recommended_learning_rate`: TopK/BatchTopK). The method's config reads its own keys (`from_settings`): for BA/GBA,
        `target_frequency` sets the single target and a frequency may be a multiple of f written
        as a string, e.g. "2f". `width` may be a multiple of n, e.g. "4n", and `d` a multiple of
        sqrt(n), e.g. "2sqrt(n)" (both rounded to the nearest integer, at least 1), so a spec
        scales with one line (n).
        Unknown keys are an error, so a typo never silently falls back to a default.
        """
        settings = dict(settings)
        if "s" in settings:
            settings["sparsity"] = settings.pop("s")
        method = settings.pop("method", "ba")
        check_choice("method", method, tuple(METHODS))
        seed = settings.pop("seed", 0)
        data = parse_data(settings.pop("data", PLANTED))
        if is_world(data):
            settings = world_settings(data, settings, settings.get("feature_seed", seed))
        parts = {}
        for name, part in (("model", FeatureModel), ("sae", SAEConfig), ("train", TrainConfig)):
            names = {f.name for f in dataclasses.fields(part)} - {"seed"}
            parts[name] = {key: _tuple(settings.pop(key)) for key in list(settings) if key in names}
        if isinstance(parts["model"].get("d"), str):
            root_n = parts["model"].get("n", FeatureModel.n) ** 0.5
            parts["model"]["d"] = multiple_setting(parts["model"]["d"], "d", "sqrt(n)", root_n, "2sqrt(n)", "an integer >= 1", integer=True)
        model = FeatureModel(seed=settings.pop("feature_seed", seed), **parts["model"])
        if isinstance(parts["sae"].get("width"), str):
            parts["sae"]["width"] = multiple_setting(parts["sae"]["width"], "width", "n", model.n, "4n", "an integer >= 1", integer=True)
        method_class = METHODS[method]
        parts["sae"].setdefault("tied", method_class.tied_default)
        method_names = method_class.setting_names()
        method_settings = {key: settings.pop(key) for key in list(settings) if key in method_names}
        method_config = method_class.from_settings(method_settings, model.feature_frequency, method)
        eval_samples = settings.pop("eval_samples", 16384)
        if settings:
            raise ConfigError(f"settings: unknown setting(s) {', '.join(sorted(settings))}")
        return cls(
            model=model,
            sae=SAEConfig(**parts["sae"]),
            method=method,
            method_config=method_config,
            train=TrainConfig(**parts["train"]),
            seed=seed,
            eval_samples=eval_samples,
            data=data,
        )

    @classmethod
    def from_dict(cls, settings: dict) -> "RecoverConfig":
        """Inverse of `to_dict` (lists become tuples again)."""
        tuples = lambda part: {k: _tuple(v) for k, v in part.items()}  # noqa: E731
        return cls(
            model=FeatureModel(**tuples(settings["model"])),
            sae=SAEConfig.from_dict(settings["sae"]),
            method=settings["method"],
            method_config=METHODS[settings["method"]](**tuples(settings["method_config"])),
            train=TrainConfig(**settings["train"]),
            seed=settings["seed"],
            eval_samples=settings["eval_samples"],
            data=settings.get("data", PLANTED),
        )


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def world_settings(data: str, settings: dict, world_seed: int) -> dict:
    """`settings` with n, d and s set to the world's (built with `world_seed`); a planted-model setting is an error."""
    planted = {field.name for field in dataclasses.fields(FeatureModel)} - {"n", "d", "sparsity", "seed"}
    refused = sorted(planted & set(settings))
    if refused:
        raise ConfigError(f"{refused[0]}: a setting of the planted model; the world {data!r} defines its own data")
    world = world_summary(data, world_seed)
    own = {"n": world["n"], "d": world["d"], "sparsity": max(1, round(world["true_l0"]))}
    for name, value in own.items():
        if name in settings and settings[name] != value:
            raise ConfigError(f"{name}: the world {data!r} has {name} = {value}; leave {name} unset, got {settings[name]!r}")
    return {**settings, **own}


@dataclass
class RecoverResult:
    """The trained SAE with its data, metrics and training history."""

    config: RecoverConfig
    data: SyntheticData | WorldData
    sae: SparseAutoencoder
    method: Method
    metrics: dict
    history: pd.DataFrame


def torch_batches(data: SyntheticData, batch_size: int, seed: int, device: torch.device, start: int = 0):
    """The synthetic stream as float32 tensors on `device`, from batch `start` on."""
    for batch in data.stream(batch_size, seed, start):
        yield torch.from_numpy(batch.x).to(device)


def make_data(config: RecoverConfig, features: np.ndarray | None = None) -> SyntheticData | WorldData:
    """The run's data source: the planted model (on `features` if given) or a SynthSAEBench world."""
    if is_world(config.data):
        if features is not None:
            raise ConfigError(f"features: a world ({config.data!r}) has its own features")
        return WorldData(config.data, config.model.seed)
    return SyntheticData(config.model, features=features)


def prepare(config: RecoverConfig, features: np.ndarray | None = None):
    """The run's data, freshly initialised SAE and method, and the initial decoder rows."""
    device = resolve_device(config.train.device)
    data = make_data(config, features)
    generator = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(config.sae, config.model.d, generator, device)
    method = config.method_config.build(config.sae.width, device)
    # A copy: an untied decoder_weight is the parameter itself, which training changes in place.
    return data, sae, method, sae.decoder_weight.detach().cpu().numpy().copy()


def finish(config, data, sae, method, initial_decoder, history, started: float) -> RecoverResult:
    """Evaluate a trained SAE and bundle the run's result (`started`: its perf_counter start);
    on a SynthSAEBench world, SAELens's own ground-truth evaluation is added (`saelens_*`), and
    `world_width_l0`, the L0 of an SAE of this width holding the most frequent features."""
    metrics = evaluate_run(sae, method, data, config)
    initial_best = best_cosines(data.features, initial_decoder)
    for tau in (0.8, 0.9):
        metrics[f"frr_init_{tau}"] = float(np.mean(initial_best >= tau))
    result = RecoverResult(config, data, sae, method, metrics, history)
    if is_world(config.data):
        seed = int(np.random.SeedSequence([config.seed, 4]).generate_state(1)[0])
        metrics.update(saelens_evaluation(result, config.eval_samples, seed))
        metrics["world_width_l0"] = width_l0(config.data, config.model.seed, config.sae.width)
    metrics["wall_seconds"] = time.perf_counter() - started
    return result


CHECKPOINTS_PER_RUN = 10
"""A checkpointed run saves its state about this many times (at history rows)."""


def checkpoint_interval(train_config: TrainConfig) -> int:
    """Steps between a checkpointed run's saved states: the first multiple of log_every from a tenth of the run."""
    logs = -(-train_config.steps // (CHECKPOINTS_PER_RUN * train_config.log_every))
    return train_config.log_every * max(1, logs)


def run(
    config: RecoverConfig, features: np.ndarray | None = None, progress: bool = False, checkpoint: str | Path | None = None
) -> RecoverResult:
    """Train one SAE on one synthetic instance and evaluate its recovery of the planted features.

    With `checkpoint` (a file path) the training state is saved there `CHECKPOINTS_PER_RUN` times,
    and a run that finds a state there resumes from it with the same result as an uninterrupted
    one (the stream's batch i depends on (seed, i) alone); its wall seconds are the resumed part's.
    The caller removes the file once the result is stored.
    """
    started = time.perf_counter()
    data, sae, method, initial_decoder = prepare(config, features)
    saver = None
    start = 0
    if checkpoint is not None:
        state = read_checkpoint(checkpoint, sae.weight.device)
        start = 0 if state is None else int(state["step"])
        saver = Checkpoint(checkpoint_interval(config.train), lambda saved: save_atomically(saved, checkpoint), state)
    history = train(
        sae,
        method,
        torch_batches(data, config.train.batch_size, config.seed, sae.weight.device, start),
        config.train,
        features=data.features,
        progress=progress,
        checkpoint=saver,
    )
    return finish(config, data, sae, method, initial_decoder, history, started)


EVALUATION_BATCH = 4096
"""Samples per evaluation batch (`evaluate_run`)."""
PROJECTION_COPIES = 9
"""Peak fp32 copies of a (rows, width) projection matrix in a dense training step or an evaluation
batch (projections, gate, codes, their gradients): measured with /usr/bin/time at width 32,768,
batch 512-8192 (peak RSS 4.9-10.3 GB)."""


def memory_estimate(config: RecoverConfig) -> dict[str, int]:
    """Bytes of a run's largest allocations, each under the settings that size it (the base
    interpreter and torch, about 0.7 GB, not included)."""
    model, width = config.model, config.sae.width
    # A calibrated BA/GBA start trains sparse from the first step, and evaluation reads wide batches
    # by blocks: then no step holds more than a block of projections. Otherwise the first steps are dense.
    sparse_from_start = config.train.sparse_step and getattr(config.method_config, "initial_bias", None) == CALIBRATED
    projections = min(BLOCK_ELEMENTS, width * min(EVALUATION_BATCH, config.eval_samples))
    if not sparse_from_start:
        projections = max(projections, width * config.train.batch_size)
    matrices = 2 if not config.sae.tied else 1
    estimate = {
        "width x batch_size (projections)": PROJECTION_COPIES * 4 * projections,
        "width x d (weights, gradients, Adam)": 16 * matrices * width * model.d,
        "n x d (features)": 20 * model.n * model.d,
    }
    if max(model.sparsity_values) ** 2 > model.n:  # the sampler draws n random keys per sample
        estimate["n x batch_size (sampler)"] = 16 * model.n * config.train.batch_size
    if model.n * width <= DENSE_MATCHING_ENTRIES:
        estimate["n x width (matching)"] = 8 * model.n * width
    return estimate


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device` (the host's MemAvailable for the CPU), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(config: RecoverConfig, copies: int = 1) -> None:
    """Refuse, before any work, a run whose largest allocations (`copies` runs at once) exceed the free memory."""
    estimate = memory_estimate(config)
    needed = copies * sum(estimate.values())
    device = resolve_device(config.train.device)
    free = available_memory(device)
    if free is None or needed <= free:
        return
    largest = max(estimate, key=estimate.get)
    setting = largest.split(" (")[0]
    gigabytes = lambda count: f"{count / 2**30:.1f} GB"  # noqa: E731
    runs = f" for {copies} runs at once" if copies > 1 else ""
    raise ConfigError(
        f"{setting}: the run needs about {gigabytes(needed)}{runs} ({largest}: {gigabytes(copies * estimate[largest])}), "
        f"more than the {gigabytes(free)} free on {device.type}; lower {setting.replace(' x ', ' or ')}"
    )


def stackable(first: RecoverConfig, other: RecoverConfig) -> bool:
    """Points can train as one stack when their SAE shapes and optimiser settings agree."""
    return first.sae == other.sae and first.train == other.train and first.model.d == other.model.d


def run_stack(configs: list[RecoverConfig], progress: bool = False) -> list[RecoverResult]:
    """Train G points as one stacked computation and evaluate each; each result equals its own
    `run` up to float rounding, and a fixed set of stacked points is reproducible bit for bit."""
    if not configs:
        return []
    if not all(stackable(configs[0], config) for config in configs):
        raise ConfigError("configs: points trained together must share sae, train settings and d")
    started = time.perf_counter()
    prepared = [prepare(config) for config in configs]
    saes = [sae for _, sae, _, _ in prepared]
    stacked = SparseAutoencoder.stack(saes)
    method = MethodStack([point_method for _, _, point_method, _ in prepared], configs[0].sae.width)
    device = stacked.weight.device
    # Points on the same instance and seed (a sweep of targets) read the same stream: sample it once.
    stream_of, streams = {}, []
    for config, (data, _, _, _) in zip(configs, prepared):
        key = (config.model, config.data, config.seed)
        if key not in stream_of:
            stream_of[key] = len(streams)
            streams.append(torch_batches(data, config.train.batch_size, config.seed, device))
    order = torch.tensor([stream_of[(config.model, config.data, config.seed)] for config in configs], device=device)
    batches = (torch.stack([next(stream) for stream in streams])[order] for _ in itertools.count())
    rows = [[] for _ in configs]
    train(
        stacked,
        method,
        batches,
        configs[0].train,
        features=[data.features for data, *_ in prepared],
        progress=progress,
        on_log=lambda row: rows[row["point"]].append({k: v for k, v in row.items() if k != "point"}),
    )
    stacked.unstack_into(saes)
    results = [
        finish(config, data, sae, point_method, initial_decoder, pd.DataFrame(point_rows), started)
        for config, (data, sae, point_method, initial_decoder), point_rows in zip(configs, prepared, rows)
    ]
    seconds = time.perf_counter() - started
    for result in results:
        result.metrics["wall_seconds"] = seconds / len(results)  # each point's share of the stacked run
    return results


def evaluate_run(sae: SparseAutoencoder, method: Method, data: SyntheticData, config: RecoverConfig) -> dict:
    """The evaluator's metrics on `config.eval_samples` fresh samples, with the instance's own:
    the feature frequency f, the matched frequency over f, and the recovery of co-occurring pairs."""
    rng = np.random.default_rng([config.seed, 3])
    device = sae.weight.device
    sizes = [min(EVALUATION_BATCH, config.eval_samples - start) for start in range(0, config.eval_samples, EVALUATION_BATCH)]
    batches = (torch.from_numpy(data.sample(size, rng).x).to(device) for size in sizes)
    evaluation = evaluate(sae, method, batches, normalise_inputs=config.train.normalise_inputs, features=data.features)
    metrics = evaluation.metrics
    f = config.model.feature_frequency
    metrics["feature_frequency"] = f
    metrics["matched_frequency_over_f"] = metrics["matched_frequency"] / f
    paired = 2 * config.model.cooccurring_pairs
    if paired:
        best = evaluation.best_cosine
        metrics["frr_0.9_paired"] = float(np.mean(best[:paired] >= 0.9))
        metrics["frr_0.9_unpaired"] = float(np.mean(best[paired:] >= 0.9)) if paired < config.model.n else float("nan")
    return metrics


def save(result: RecoverResult, directory: str | Path) -> Path:
    """Write features, SAE, config, metrics and history under `directory`."""
    directory = Path(directory)
    for name, tensors in (("features", {"V": result.data.features}), ("sae", sae_tensors(result.sae, result.method))):
        with atomic_path(directory / f"{name}.safetensors") as path:
            save_file(tensors, str(path))
    write_atomically(directory / "config.json", json.dumps(result.config.to_dict(), indent=2) + "\n")
    write_atomically(directory / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
    write_atomically(directory / "history.csv", result.history.to_csv(index=False))
    return directory
