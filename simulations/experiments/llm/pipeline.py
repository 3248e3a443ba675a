"""The whole LLM experiment: extract, train every planned SAE, evaluate, write the result tables.

Each stage reuses what is on disk: the activation cache (`activations.extract`), finished runs
(`runs.train_run` skips them, resumes interrupted ones). Evaluation is recomputed from the
finished runs (it is cheap next to training). Tables written to `results_dir`:

- `frontier.csv`: one row per SAE and length (method, setting, seed, parametrisation, learning rate,
  steps and training tokens seen; normalised MSE, FVU, L0, fraction active, alive fraction, CE clean
  / zero / spliced, CE recovered, KL) — the paper's Fig. 3 at the full length, and a training-length
  curve from the runs' snapshots (`PipelineConfig.snapshot_steps`);
- `consistency.csv`: per method with >= 2 seeds, the consistency table at the full length — Fig. 5;
- `neurons.csv`: per neuron of each seeded run at the full length (frequency, max activation, Z-score, MCS) — Fig. 6;
- `frequency_histograms.csv`: per run and group at the full length, neuron counts by activation frequency;
- `meta.json`: the settings, the scale and the wall time of each stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from simulations.experiments.llm.activations import ActivationConfig, cache_bytes, extract, load_quietly, site_module
from simulations.experiments.llm.data import load_split
from simulations.experiments.llm.evaluate import consistency, frequency_histograms, reconstruction_metrics, spliced_losses
from simulations.engine.methods.bias_adaptation import TARGETS_WITHOUT_F
from simulations.experiments.llm.runs import DEFAULT_WIDTH, LLMRunConfig, default_sae, default_train, load_run, train_run
from simulations.engine.methods import METHODS
from simulations.engine.progress import progress_bar
from simulations.engine.train import TrainConfig, resolve_device
from theory.validation import ConfigError, check_int


CPU_SCALE_CONTROLLER = {"update_interval": 4096}
"""Bias updates every 4096 tokens (4 steps of 1024). The paper updates every 25,600 tokens (digest §3.5)
over 100M tokens, i.e. thousands of updates; a CPU run of ~100k-400k tokens at that interval gets
only 5-20 updates, too few for the thresholds to settle (measured: 100 steps of 1024 tokens with the
default interval left 42 % of neurons active, far above every group's target)."""


@dataclass(frozen=True)
class PlannedRun:
    """One SAE of the experiment."""

    method: str
    settings: tuple = ()
    """(name, value) pairs of the method's settings."""
    seed: int = 0
    tied: bool | None = None
    """The SAE's parametrisation; None: the method's own (BA/GBA tied, the baselines untied)."""

    @property
    def name(self) -> str:
        """'topk-k24-s0'; a parametrisation other than the method's own is named: 'topk-k24-tied-s0'."""
        label = "-".join(f"{key.split('_')[0][:2]}{value:g}" for key, value in self.settings if key not in ("groups", "update_interval"))
        variant = "" if self.tied in (None, METHODS[self.method].tied_default) else ("tied" if self.tied else "untied")
        return "-".join(part for part in (self.method, label, variant, f"s{self.seed}") if part)


def default_plan(seeds: int = 3, topk=(16, 32, 64), l1=(0.01, 0.03, 0.1), ba=(0.01,)) -> list[PlannedRun]:
    """GBA (paper defaults) over `seeds` seeds, a TopK sweep, an L1 sweep and BA; the middle TopK and L1 settings
    also over the seeds. The seeded runs come first, so a stopped experiment has its comparisons before its sweeps."""
    check_int("seeds", seeds, 1)
    plan = [PlannedRun("gba", tuple({**TARGETS_WITHOUT_F, **CPU_SCALE_CONTROLLER}.items()), seed) for seed in range(seeds)]
    sweeps = [("topk", "k", list(topk)), ("relu-l1", "l1_coefficient", list(l1))]
    for method, key, values in sweeps:
        if values:
            plan += [PlannedRun(method, ((key, values[len(values) // 2]),), seed) for seed in range(seeds)]
    for method, key, values in sweeps:
        plan += [PlannedRun(method, ((key, value),)) for index, value in enumerate(values) if index != len(values) // 2]
    plan += [PlannedRun("ba", (("target_frequency", p), *CPU_SCALE_CONTROLLER.items())) for p in ba]
    return plan


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the whole experiment."""

    activations: ActivationConfig = dataclasses.field(default_factory=ActivationConfig)
    """What to extract (model, layer, site, corpus, tokens)."""
    width: int = DEFAULT_WIDTH
    """SAE width M for every run."""
    train: TrainConfig = dataclasses.field(default_factory=default_train)
    """Optimiser settings of every run (a learning rate of None: each method's own, see `runs`)."""
    snapshot_steps: tuple[int, ...] = ()
    """Steps before the last at which every run is also evaluated: the training-length curve."""
    checkpoint_every: int = 100
    """Steps between checkpoints of each run."""
    ce_sequences: int = 32
    """Eval sequences for the spliced CE / KL (each a full forward pass per SAE)."""

    def __post_init__(self):
        check_int("width", self.width, 1)
        check_int("ce_sequences", self.ce_sequences, 1)


def run_pipeline(config: PipelineConfig, plan: list[PlannedRun], root: str | Path, results_dir: str | Path, progress: bool = True, log=print) -> dict:
    """Extract, train, evaluate; returns the meta dict (also written to `results_dir/meta.json`)."""
    missing = sorted({run.method for run in plan} - set(METHODS))
    if missing:
        raise ConfigError(f"method: {', '.join(missing)} not registered in simulations.engine.methods.METHODS")
    for planned in plan:  # every run's settings are checked before the first one starts
        run_config(config, planned, cache="")
    root, results_dir = Path(root), Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    started = time.perf_counter()
    folder = extract(config.activations, root / "cache", progress=progress)
    seconds["extract"] = time.perf_counter() - started
    log(f"activations: {folder} ({seconds['extract']:.0f} s)")

    started = time.perf_counter()
    run_dirs = {}
    for index, planned in enumerate(plan):
        settings = run_config(config, planned, cache=str(folder))
        run_started = time.perf_counter()
        # The settings' hash in the folder name keeps runs of other widths or step counts apart.
        digest = hashlib.sha1(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        run_dirs[planned] = train_run(settings, root / "runs" / folder.name / f"{planned.name}-{digest}", progress=progress)
        log(f"[{index + 1}/{len(plan)}] {planned.name} trained ({time.perf_counter() - run_started:.0f} s)")
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    tables = evaluate_runs(config, folder, run_dirs, root, progress=progress)
    seconds["evaluate"] = time.perf_counter() - started
    for name, table in tables.items():
        table.to_csv(results_dir / f"{name}.csv", index=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    meta = {
        "activations": dataclasses.asdict(config.activations),
        "d": manifest["d"],
        "train_tokens": manifest["splits"]["train"]["tokens"],
        "eval_tokens": manifest["splits"]["eval"]["tokens"],
        "cache_bytes": cache_bytes(folder),
        "width": config.width,
        "train": dataclasses.asdict(config.train),
        "snapshot_steps": list(config.snapshot_steps),
        "runs": [run.name for run in plan],
        "seconds": seconds,
        "threads": torch.get_num_threads(),
    }
    (results_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"results in {results_dir}: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return meta


def run_config(config: PipelineConfig, planned: PlannedRun, cache: str) -> LLMRunConfig:
    """The settings of one planned run (checked on construction)."""
    return LLMRunConfig(
        cache=cache,
        method=planned.method,
        method_settings=dict(planned.settings),
        sae=default_sae(planned.method, config.width, planned.tied),
        train=config.train,
        seed=planned.seed,
        checkpoint_every=config.checkpoint_every,
        snapshot_steps=config.snapshot_steps,
    )


def evaluate_runs(config: PipelineConfig, folder: Path, run_dirs: dict, root: Path, progress: bool = True) -> dict[str, pd.DataFrame]:
    """The result tables of finished runs (see the module docstring)."""
    device = resolve_device(config.train.device)
    eval_split = load_split(folder, "eval")
    loaded, rows, neuron_tables, histograms, final = {}, [], {}, [], {}
    lengths = (*config.snapshot_steps, config.train.steps)
    bar = progress_bar(total=len(run_dirs) * len(lengths), enabled=progress, desc="evaluate", unit="SAEs")
    for planned, run_dir in run_dirs.items():
        for steps in lengths:
            run, sae, method = load_run(run_dir, device, steps)
            snapshot = f"{planned.name}@{steps}"
            loaded[snapshot] = (sae, method)
            metrics, neurons = reconstruction_metrics(sae, method, eval_split.activations)
            rows.append({
                "run": planned.name, "method": planned.method, "setting": json.dumps(dict(planned.settings)), "seed": planned.seed,
                "tied": run.sae.tied, "learning_rate": run.train.learning_rate, "steps": steps,
                "train_tokens": steps * run.train.batch_size, "snapshot": snapshot, **metrics,
            })
            bar.update(1)
        final[planned.name] = (sae, method)
        neuron_tables[planned] = neurons
        histograms.append(frequency_histograms(neurons).assign(run=planned.name, method=planned.method))
    bar.close()
    model, _ = load_quietly(config.activations.model, root / "cache", device, quiet=not progress)
    module = site_module(model, config.activations.layer, config.activations.site)
    ce = spliced_losses(model, module, eval_split.token_ids[: config.ce_sequences], loaded, config.activations.drop_first, batch_size=8,
                        progress=progress)
    frontier = pd.DataFrame(rows).merge(ce.rename(columns={"run": "snapshot"}), on="snapshot").drop(columns="snapshot")

    consistency_tables, neuron_rows = [], []
    by_setting: dict[tuple, list[PlannedRun]] = {}
    for planned in run_dirs:
        by_setting.setdefault((planned.method, planned.settings, planned.tied), []).append(planned)
    for (method_name, settings, _), runs in by_setting.items():
        if len(runs) < 2:
            continue
        decoders = [final[run.name][0].decoder_weight.detach().cpu().numpy() for run in runs]
        table, mcs = consistency(decoders, [neuron_tables[run] for run in runs])
        consistency_tables.append(table.assign(method=method_name, setting=json.dumps(dict(settings)), seeds=len(runs)))
        for run, run_mcs in zip(runs, mcs):
            neuron_rows.append(neuron_tables[run].assign(run=run.name, method=method_name, mcs=run_mcs))
    return {
        "frontier": frontier,
        "consistency": pd.concat(consistency_tables, ignore_index=True) if consistency_tables else pd.DataFrame(),
        "neurons": pd.concat(neuron_rows, ignore_index=True) if neuron_rows else pd.DataFrame(),
        "frequency_histograms": pd.concat(histograms, ignore_index=True),
    }
