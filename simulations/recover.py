"""One recovery experiment: plant features, train an SAE on them, measure what it found.

A grid point is one `RecoverConfig`; `run` is the whole experiment and `save` writes it to disk
(features, SAE weights in SAELens's names and layout, the full config and the metrics).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import save_file

from simulations.methods import METHODS, MethodConfig
from simulations.methods.base import Method
from simulations.methods.bias_adaptation import BiasAdaptationConfig, frequency_setting  # noqa: F401 (re-exported)
from simulations.sae import SAEConfig, SparseAutoencoder
from simulations.train import TrainConfig, normalise, resolve_device, train
from theory.metrics import ReconstructionStats, dead_fraction, feature_recovery_rate, max_cosine, mcc
from theory.model import FeatureModel, SyntheticData
from theory.validation import ConfigError, check_choice, check_int, multiple_setting


@dataclass(frozen=True)
class RecoverConfig:
    """Everything that defines one run; equal configs give bit-identical results on CPU."""

    model: FeatureModel = field(default_factory=FeatureModel)
    """The statistical model (n, d, s, coefficients, ...)."""
    sae: SAEConfig = field(default_factory=SAEConfig)
    """Width and parametrisation of the SAE."""
    method: str = "ba"
    """Training method, a key of `simulations.methods.METHODS`."""
    method_config: MethodConfig = field(default_factory=lambda: BiasAdaptationConfig.single(2 * FeatureModel().feature_frequency))
    """Settings of the method (for BA/GBA: targets, gamma, epsilon, update interval)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimiser settings."""
    seed: int = 0
    """Seed of the SAE initialisation and of the data stream (V has its own, `model.seed`)."""
    eval_samples: int = 16384
    """Fresh samples for the final evaluation (L0, dead fraction, EV, frequencies)."""

    def __post_init__(self):
        check_choice("method", self.method, tuple(METHODS))
        if not isinstance(self.method_config, METHODS[self.method]):
            raise ConfigError(f"method_config: method {self.method!r} needs a {METHODS[self.method].__name__}")
        self.method_config.check(self.method, self.sae.width)
        check_int("seed", self.seed, 0)
        check_int("eval_samples", self.eval_samples, 1)

    def to_dict(self) -> dict:
        """Every setting, nested by part, JSON-ready."""
        return {
            "model": dataclasses.asdict(self.model),
            "sae": dataclasses.asdict(self.sae),
            "method": self.method,
            "method_config": dataclasses.asdict(self.method_config),
            "train": dataclasses.asdict(self.train),
            "seed": self.seed,
            "eval_samples": self.eval_samples,
        }

    @classmethod
    def from_settings(cls, settings: dict) -> "RecoverConfig":
        """Build a config from one flat mapping of settings, as grid specs and tables use.

        Keys are the field names of `FeatureModel` (`s` is short for `sparsity`), `SAEConfig`,
        `TrainConfig` and the method's config class (its `setting_names()`), plus `method`, `seed`
        (the run's seed, also V's unless `feature_seed` is given), `feature_seed` and
        `eval_samples`. The method's config reads its own keys (`from_settings`): for BA/GBA,
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
        method_names = method_class.setting_names()
        method_settings = {key: settings.pop(key) for key in list(settings) if key in method_names}
        method_config = method_class.from_settings(method_settings, model.feature_frequency)
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
        )

    @classmethod
    def from_dict(cls, settings: dict) -> "RecoverConfig":
        """Inverse of `to_dict` (lists become tuples again)."""
        tuples = lambda part: {k: _tuple(v) for k, v in part.items()}  # noqa: E731
        return cls(
            model=FeatureModel(**tuples(settings["model"])),
            sae=SAEConfig(**settings["sae"]),
            method=settings["method"],
            method_config=METHODS[settings["method"]](**tuples(settings["method_config"])),
            train=TrainConfig(**settings["train"]),
            seed=settings["seed"],
            eval_samples=settings["eval_samples"],
        )


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


@dataclass
class RecoverResult:
    """The trained SAE with its data, metrics and training history."""

    config: RecoverConfig
    data: SyntheticData
    sae: SparseAutoencoder
    method: Method
    metrics: dict
    history: pd.DataFrame


def torch_batches(data: SyntheticData, batch_size: int, seed: int, device: torch.device):
    """The synthetic stream as float32 tensors on `device`."""
    for batch in data.stream(batch_size, seed):
        yield torch.from_numpy(batch.x).to(device)


def prepare(config: RecoverConfig, features: np.ndarray | None = None):
    """The run's data, freshly initialised SAE and method, and the initial decoder rows."""
    device = resolve_device(config.train.device)
    data = SyntheticData(config.model, features=features)
    generator = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(config.sae, config.model.d, generator, device)
    method = config.method_config.build(config.sae.width, device)
    # A copy: an untied decoder_weight is the parameter itself, which training changes in place.
    return data, sae, method, sae.decoder_weight.detach().cpu().numpy().copy()


def finish(config, data, sae, method, initial_decoder, history, started: float) -> RecoverResult:
    """Evaluate a trained SAE and bundle the run's result (`started`: its perf_counter start)."""
    metrics = evaluate(sae, method, data, config)
    for tau in (0.8, 0.9):
        metrics[f"frr_init_{tau}"] = feature_recovery_rate(data.features, initial_decoder, tau)
    metrics["wall_seconds"] = time.perf_counter() - started
    return RecoverResult(config, data, sae, method, metrics, history)


def run(config: RecoverConfig, features: np.ndarray | None = None, progress: bool = False) -> RecoverResult:
    """Train one SAE on one synthetic instance and evaluate its recovery of the planted features."""
    started = time.perf_counter()
    data, sae, method, initial_decoder = prepare(config, features)
    history = train(
        sae,
        method,
        torch_batches(data, config.train.batch_size, config.seed, sae.weight.device),
        config.train,
        features=data.features,
        progress=progress,
    )
    return finish(config, data, sae, method, initial_decoder, history, started)


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, method: Method, data: SyntheticData, config: RecoverConfig) -> dict:
    """Recovery, reconstruction and frequency metrics on fresh samples."""
    device = sae.weight.device
    decoder = sae.decoder_weight.cpu().numpy()
    best, _ = max_cosine(data.features, decoder)
    method.eval()  # inference rule (BatchTopK's running threshold)
    stats = ReconstructionStats()
    counts = torch.zeros(sae.width, device=device)
    active_total = 0.0
    rng = np.random.default_rng([config.seed, 3])
    remaining = config.eval_samples
    while remaining > 0:
        size = min(remaining, 4096)
        x = torch.from_numpy(data.sample(size, rng).x).to(device)
        if config.train.normalise_inputs:
            x = normalise(x)
        codes = method.encode(sae.project(x))
        stats.update(x.cpu().numpy(), sae.decode(codes).cpu().numpy())
        active = codes != 0
        counts += active.sum(dim=0)
        active_total += float(active.sum())
        remaining -= size
    frequency = (counts / config.eval_samples).cpu()
    metrics = {
        "frr_0.8": float(np.mean(best >= 0.8)),
        "frr_0.9": float(np.mean(best >= 0.9)),
        "mean_max_cosine": float(np.mean(best)),
        "mcc": mcc(data.features, decoder),
        "l0": active_total / config.eval_samples,
        "dead_fraction": dead_fraction(counts.cpu().numpy()),
        "explained_variance": stats.explained_variance,
        "normalised_mse": stats.normalised_mse,
        "feature_frequency": config.model.feature_frequency,
        "mean_activation_frequency": float(frequency.mean()),
    }
    groups, targets = method.group_of_neuron(), method.target_frequencies()
    if groups is not None:
        groups = groups.cpu()
        metrics["groups"] = [
            {
                "target_frequency": float(targets[k]),
                "mean_frequency": float(frequency[groups == k].mean()),
                "max_frequency": float(frequency[groups == k].max()),
                "fraction_above_target": float((frequency[groups == k] > targets[k]).float().mean()),
                "frequencies": frequency[groups == k].tolist(),
            }
            for k in range(len(targets))
        ]
    return metrics


def sae_tensors(sae: SparseAutoencoder, method: Method) -> dict[str, np.ndarray]:
    """The SAE in SAELens's JumpReLU names and layout: W_enc (d, M), W_dec (M, d), b_enc, b_dec, threshold."""
    tensors = {
        "W_enc": sae.weight.detach().T.contiguous(),
        "W_dec": sae.decoder_weight.detach().contiguous(),
        "b_dec": sae.pre_bias.detach(),
        **method.export(),
    }
    return {name: tensor.cpu().numpy().astype(np.float32) for name, tensor in tensors.items()}


def save(result: RecoverResult, directory: str | Path) -> Path:
    """Write features, SAE, config, metrics and history under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"V": result.data.features}, str(directory / "features.safetensors"))
    save_file(sae_tensors(result.sae, result.method), str(directory / "sae.safetensors"))
    (directory / "config.json").write_text(json.dumps(result.config.to_dict(), indent=2) + "\n")
    (directory / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    result.history.to_csv(directory / "history.csv", index=False)
    return directory
