"""One SAE trained on an activation cache with the one training loop; checkpointed and resumable.

A run directory holds `config.json` (every setting), `checkpoint.pt` while training (replaced
atomically every `checkpoint_every` steps), `snapshot_NNNNNN.pt` at each of `snapshot_steps` (the
SAE's and method's state then: a training-length curve from one run), and at the end
`sae.safetensors` (SAELens's names and layout, in unit-norm input units), `final.pt` (the SAE's and
method's state dicts), `history.csv` and `done.json`. Running the same config into the
same directory resumes from the checkpoint, or does nothing when the run is done.

Each method trains with its own parametrisation and learning rate unless the config sets them:
BA/GBA tied (the paper's SAE), the baselines untied as the field trains them
(`MethodConfig.tied_default`); TopK/BatchTopK at their recommended rate
(`MethodConfig.recommended_learning_rate`), the others at `LLM_LEARNING_RATE`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.numpy import save_file

from simulations.experiments.llm.data import load_split, shuffled_batches
from simulations.engine.methods import METHODS, MethodConfig
from simulations.engine.methods.bias_adaptation import TARGETS_WITHOUT_F
from simulations.experiments.export import sae_tensors
from simulations.experiments.files import atomic_path, read_checkpoint, read_json, save_atomically, write_atomically
from simulations.engine.sae import SAEConfig, SparseAutoencoder
from simulations.engine.train import Checkpoint, TrainConfig, resolve_device, train
from theory.validation import MAX_SEED, ConfigError, check_choice, check_int



LLM_LEARNING_RATE = 1e-3
"""Adam's learning rate for methods without a recommended one (BA/GBA, ReLU-L1, JumpReLU)."""
DEFAULT_WIDTH = 4096
"""SAE width M of the LLM runs (CPU scale; the paper's is 65,536)."""


def default_train() -> TrainConfig:
    """Optimiser settings of the LLM runs: Adam, batches of 1024 tokens, 400 steps (CPU scale); the
    learning rate left to each method (see the module docstring)."""
    return TrainConfig(steps=400, batch_size=1024, log_every=25)


def default_sae(method: str, width: int = DEFAULT_WIDTH, tied: bool | None = None) -> SAEConfig:
    """The SAE a method trains with on activations: `tied` None takes the method's own parametrisation."""
    check_choice("method", method, tuple(METHODS))
    return SAEConfig(width=width, tied=METHODS[method].tied_default if tied is None else tied)


@dataclass(frozen=True)
class LLMRunConfig:
    """One SAE on one activation cache."""

    cache: str
    """The activation cache folder (written by `gba llm extract`)."""
    method: str = "gba"
    """A key of `simulations.engine.methods.METHODS`."""
    method_settings: dict | None = None
    """Keyword settings of the method's config class (for 'ba': `target_frequency`); None: the method's
    defaults, and for 'gba' the paper's targets (K = 10, 0.1 -> 0.001: no f is known on activations)."""
    sae: SAEConfig | None = None
    """Width and parametrisation; None: `default_sae(method)`."""
    train: TrainConfig = field(default_factory=default_train)
    """Optimiser settings (inputs are scaled to unit norm, the paper's normalisation); a learning rate of
    None takes the method's recommended one, or `LLM_LEARNING_RATE`."""
    seed: int = 0
    """Seed of the SAE initialisation and of the batch order."""
    checkpoint_every: int = 100
    """Steps between checkpoints (a multiple of train.log_every)."""
    max_tokens: int | None = None
    """Train on the first this-many cached tokens only (None: all)."""
    snapshot_steps: tuple[int, ...] = ()
    """Steps before the last at which the SAE and method are kept (`snapshot_NNNNNN.pt`), each a multiple of
    `checkpoint_every`: the run's state after fewer tokens, for a training-length curve."""

    def __post_init__(self):
        check_choice("method", self.method, tuple(METHODS))
        if self.method_settings is None:
            object.__setattr__(self, "method_settings", dict(TARGETS_WITHOUT_F) if self.method == "gba" else {})
        if self.sae is None:
            object.__setattr__(self, "sae", default_sae(self.method))
        if self.train.learning_rate is None:
            rate = METHODS[self.method].recommended_learning_rate(self.sae.width) or LLM_LEARNING_RATE
            object.__setattr__(self, "train", dataclasses.replace(self.train, learning_rate=rate))
        self.method_config()  # validates the settings before any work
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("checkpoint_every", self.checkpoint_every, 1)
        if self.checkpoint_every % self.train.log_every:
            raise ConfigError(f"checkpoint_every: must be a multiple of log_every ({self.train.log_every}), got {self.checkpoint_every}")
        if self.max_tokens is not None:
            check_int("max_tokens", self.max_tokens, 1)
        object.__setattr__(self, "snapshot_steps", tuple(sorted(set(self.snapshot_steps))))
        for step in self.snapshot_steps:
            check_int("snapshot_steps", step, 1, self.train.steps - 1)
            if step % self.checkpoint_every:
                raise ConfigError(f"snapshot_steps: each must be a multiple of checkpoint_every ({self.checkpoint_every}), got {step}")

    def method_config(self) -> MethodConfig:
        """The method's config, with the settings that scale with the run resolved for its tokens."""
        settings = dict(self.method_settings)
        config_class = METHODS[self.method]
        try:
            if "target_frequency" in settings and hasattr(config_class, "single"):
                config = config_class.single(settings.pop("target_frequency"), **settings)
            else:
                config = config_class(**settings)
        except TypeError:
            allowed = ", ".join(sorted(config_class.setting_names()))
            unknown = ", ".join(sorted(set(settings) - config_class.setting_names())) or "(a duplicate setting)"
            raise ConfigError(f"method_settings: {unknown} not a setting of {self.method!r} (its settings: {allowed})") from None
        return config.for_run(self.train.steps * self.train.batch_size)

    def to_dict(self) -> dict:
        return {
            "cache": self.cache,
            "method": self.method,
            "method_settings": dict(self.method_settings),
            "sae": self.sae.to_dict(),
            "train": dataclasses.asdict(self.train),
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "max_tokens": self.max_tokens,
            **({"snapshot_steps": list(self.snapshot_steps)} if self.snapshot_steps else {}),
        }

    @classmethod
    def from_dict(cls, settings: dict) -> "LLMRunConfig":
        settings = dict(settings)
        settings["sae"] = SAEConfig.from_dict(settings["sae"])
        settings["train"] = TrainConfig(**settings["train"])
        settings["snapshot_steps"] = tuple(settings.get("snapshot_steps", ()))
        return cls(**settings)


def build(config: LLMRunConfig, d: int, device) -> tuple[SparseAutoencoder, object]:
    """The untrained SAE and method of a run (the same seed gives the same initialisation)."""
    generator = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(config.sae, d, generator, device)
    return sae, config.method_config().build(config.sae.width, device)


def train_run(config: LLMRunConfig, run_dir: str | Path, progress: bool = True) -> Path:
    """Train (or resume, or skip when done) the run in `run_dir`; returns `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    settings = config.to_dict()
    if config_path.is_file() and read_json(config_path, "run_dir") != settings:
        raise ConfigError(f"run_dir: {run_dir} holds a run with other settings; use another directory")
    write_atomically(config_path, json.dumps(settings, indent=2) + "\n")
    if (run_dir / "done.json").is_file():
        return run_dir
    device = resolve_device(config.train.device)
    data = load_split(config.cache, "train", config.max_tokens)
    sae, method = build(config, data.d, device)
    checkpoint_path = run_dir / "checkpoint.pt"
    state = read_checkpoint(checkpoint_path, device)
    start = 0 if state is None else int(state["step"])
    batches = shuffled_batches(data.activations, config.train.batch_size, config.seed, start, device)

    def save(saved: dict) -> None:
        if saved["step"] in config.snapshot_steps:
            save_atomically({"sae": saved["sae"], "method": saved["method"]}, snapshot_path(run_dir, saved["step"]))
        save_atomically(saved, checkpoint_path)

    history = train(sae, method, batches, config.train, progress=progress, checkpoint=Checkpoint(config.checkpoint_every, save, state))
    with atomic_path(run_dir / "sae.safetensors") as path:
        save_file(sae_tensors(sae, method), str(path))
    save_atomically({"sae": sae.state_dict(), "method": method.state_dict()}, run_dir / "final.pt")
    write_atomically(run_dir / "history.csv", history.to_csv(index=False))
    # Written last: a run with done.json has every other file whole.
    write_atomically(run_dir / "done.json", json.dumps({"steps": config.train.steps, "d": data.d, "mean_norm": data.mean_norm}) + "\n")
    checkpoint_path.unlink(missing_ok=True)
    return run_dir


def snapshot_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"snapshot_{step:06d}.pt"


def load_run(run_dir: str | Path, device="cpu", step: int | None = None) -> tuple[LLMRunConfig, SparseAutoencoder, object]:
    """A finished run's config, SAE and method (in eval mode): at the end, or at one of its `snapshot_steps`."""
    run_dir = Path(run_dir)
    if not (run_dir / "done.json").is_file():
        raise ConfigError(f"run_dir: {run_dir} has no finished run (no done.json)")
    config = LLMRunConfig.from_dict(read_json(run_dir / "config.json", "run_dir"))
    if step is not None and step != config.train.steps and step not in config.snapshot_steps:
        raise ConfigError(f"step: {run_dir} keeps the steps {[*config.snapshot_steps, config.train.steps]}, got {step}")
    done = read_json(run_dir / "done.json", "run_dir")
    sae, method = build(config, done["d"], device)
    final = step is None or step == config.train.steps
    state = torch.load(run_dir / "final.pt" if final else snapshot_path(run_dir, step), map_location=device, weights_only=False)
    sae.load_state_dict(state["sae"])
    method.load_state_dict(state["method"])
    return config, sae.eval(), method.eval()
