"""`gba recover`: train one SAE on one synthetic instance and report what it recovered."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from simulations.engine.methods import METHODS
from simulations.engine.methods.base import field_docs
from simulations.engine.methods.bias_adaptation import CALIBRATED, CONTROLLERS, DEFAULT_TARGETS, BiasAdaptationConfig
from simulations.engine.sae import PRE_BIASES, SAEConfig
from simulations.engine.train import DEFAULT_LEARNING_RATE, TrainConfig
from simulations.experiments.files import check_output_directory
from simulations.experiments.recover import RecoverConfig, check_memory, run, save, world_settings
from simulations.experiments.worlds import DEFAULT_WORLD, PLANTED, WORLDS, is_world, parse_data
from theory.model import FeatureModel
from theory.validation import ConfigError

RECOMMENDED_RATES = [name for name, config in METHODS.items() if config.recommended_learning_rate(1) is not None]
"""Methods whose default learning rate is the field's rule (`MethodConfig.recommended_learning_rate`)."""


def register(parser) -> None:
    parser.description = ("Plant n unit-norm features in d dimensions, train a bias-adapted SAE on "
                          "s-sparse non-negative mixtures of them, and report FRR, MCC, L0 and dead fraction.")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    model = parser.add_argument_group("statistical model (the planted model's flags; a world defines its own)")
    model.add_argument("--data", default=PLANTED, help="'planted' (the paper's model, set by the flags below) or "
                       f"'synthsaebench[:WORLD]': a SAELens synthetic world, WORLD one of {', '.join(WORLDS)} "
                       f"({DEFAULT_WORLD} when omitted) or a saved SyntheticModel directory (needs the saelens extra)")
    # Absent flags leave the setting to FeatureModel, the one source of its defaults.
    for flag, name, kind, extra, doc in (
        ("--n", "n", int, {}, "number of features"),
        ("--d", "d", int, {}, "ambient dimension"),
        ("--s", "sparsity", int, {"nargs": "+"}, "features per sample (several values mix)"),
        ("--coefficients", "coefficients", str, {"choices": ["constant", "uniform"]},
         "each active feature's coefficient: 1, or uniform on --coefficient-range"),
        ("--coefficient-range", "coefficient_range", float, {"nargs": 2, "metavar": ("LOW", "HIGH")},
         "range of uniform coefficients"),
        ("--frequency-decay", "frequency_decay", float, {}, "Zipf exponent of feature frequencies"),
        ("--noise-std", "noise_std", float, {}, "standard deviation of Gaussian noise added to each sample"),
    ):
        default = getattr(FeatureModel, name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        model.add_argument(flag, dest=f"model_{name}", type=kind, default=argparse.SUPPRESS,
                           help=f"{doc} (default: {shown})", **extra)
    model.add_argument("--features", type=Path, default=argparse.SUPPRESS,
                       help="safetensors file with tensor V (n x d); overrides --n/--d (default: Gaussian V)")

    sae = parser.add_argument_group("autoencoder")
    sae.add_argument("--width", type=int, default=1024, help="number of neurons M")
    sae.add_argument("--tied", type=true_or_false, metavar="true|false",
                     default=argparse.SUPPRESS, help="one matrix encodes and decodes (default: the method's: true for "
                     "ba/gba as in the paper, false for the baselines as the field trains them)")
    sae.add_argument("--initial-scale", type=float, default=SAEConfig.initial_scale,
                     help="initial output scale a (tied) or decoder row norm (untied)")
    sae.add_argument("--pre-bias", choices=PRE_BIASES, default=argparse.SUPPRESS,
                     help="b_pre: learned from 0, learned from the first batch's geometric median (the field's TopK "
                     "start), or held at zero (default: median for an untied SAE, learned for a tied one)")

    method = parser.add_argument_group("method")
    method.add_argument("--method", choices=list(METHODS), default="ba", help="training method")
    # Absent flags leave the setting to BiasAdaptationConfig.from_settings, the one source of its defaults.
    ba, gba = DEFAULT_TARGETS["ba"], DEFAULT_TARGETS["gba"]
    method.add_argument("--target-frequency", dest="target_frequency", default=argparse.SUPPRESS,
                        help=f"BA's target p: a number or a multiple of f ('2f') (default: {ba['target_frequency']})")
    method.add_argument("--groups", dest="groups", type=int, default=argparse.SUPPRESS,
                        help=f"GBA: number of groups K (default: {gba['groups']})")
    method.add_argument("--htf", dest="highest_target", default=argparse.SUPPRESS,
                        help=f"GBA: highest target frequency, a number or a multiple of f (default: {gba['highest_target']})")
    method.add_argument("--ltf", dest="lowest_target", default=argparse.SUPPRESS,
                        help=f"GBA: lowest target frequency, a number or a multiple of f (default: {gba['lowest_target']})")
    for flag, name, kind, symbol in (("--bias-decrease-rate", "bias_decrease_rate", float, "gamma_minus"),
                                     ("--bias-increase-rate", "bias_increase_rate", float, "gamma_plus"),
                                     ("--dead-frequency", "dead_frequency", float, "epsilon")):
        method.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                            help=f"{symbol} (default: {getattr(BiasAdaptationConfig, name)})")
    method.add_argument("--update-interval", dest="update_interval", type=int, default=argparse.SUPPRESS,
                        help="samples between bias updates (default: max(8192, 20/lowest target))")
    method.add_argument("--activation", dest="activation", choices=["jumprelu", "relu"], default=argparse.SUPPRESS,
                        help=f"BA/GBA gate (default: {BiasAdaptationConfig.activation})")
    method.add_argument("--initial-bias", dest="initial_bias", type=bias_start, default=argparse.SUPPRESS,
                        metavar="B|calibrated",
                        help=f"BA/GBA starting bias: a number in [-1, 0], or 'calibrated' (each neuron fires on its "
                             f"target's share of the first batch: sparse from the first step) (default: {BiasAdaptationConfig.initial_bias})")
    method.add_argument("--controller", dest="controller", choices=CONTROLLERS, default=argparse.SUPPRESS,
                        help=f"BA/GBA bias-update rule: 'paper' (Algorithm 2), 'excess' (Algorithm 2 with steps scaled "
                             f"by the relative excess over the target) or 'proportional' (lands on the targets) "
                             f"(default: {BiasAdaptationConfig.controller})")
    add_method_flags(parser.add_argument_group("baseline methods (defaults: the method's config)"))

    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimiser steps")
    training.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="samples per step")
    training.add_argument("--learning-rate", type=float, default=argparse.SUPPRESS,
                          help=f"Adam's learning rate (default: {DEFAULT_LEARNING_RATE:g}, or the field's rule "
                               f"2e-4 / sqrt(width / 2^14) for {', '.join(RECOMMENDED_RATES)})")
    training.add_argument("--seed", type=int, default=0, help="seed of V, the SAE initialisation and the data")
    training.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    training.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's choice)")

    output = parser.add_argument_group("output")
    output.add_argument("--save", type=Path, default=argparse.SUPPRESS,
                        help="directory for features, SAE weights, config and metrics, new or empty (default: no files)")
    output.add_argument("--overwrite", action="store_true", help="let --save replace the files of a run already there")
    output.add_argument("--json", action="store_true", help="print the metrics as JSON")
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=handle)


BIAS_ADAPTATION_FLAGS = ("target_frequency", "groups", "highest_target", "lowest_target", "bias_decrease_rate",
                         "bias_increase_rate", "dead_frequency", "update_interval", "activation", "initial_bias", "controller")
"""The `dest` of every BA/GBA flag: the settings' own names."""


def load_features(path: Path) -> np.ndarray:
    """The tensor V of a safetensors file, checked to be a finite 2-D matrix."""
    from safetensors.numpy import load_file

    if path.is_dir():
        raise ConfigError(f"features: {str(path)!r} is a directory, not a safetensors file")
    if not path.is_file():
        raise ConfigError(f"features: no such file {str(path)!r}")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for every kind of bad file
        raise ConfigError(f"features: {str(path)!r} is not a readable safetensors file ({error})") from None
    if "V" not in tensors:
        raise ConfigError(f"features: {str(path)!r} has no tensor named 'V' (found {sorted(tensors)})")
    features = tensors["V"]
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise ConfigError(f"features: V must be a non-empty n x d matrix, got shape {features.shape}")
    return features


def baseline_fields() -> dict[str, list[tuple[str, dataclasses.Field, str]]]:
    """Field name -> [(method, field, doc)] for every method config other than BA/GBA's."""
    fields: dict[str, list] = {}
    for name, config_class in METHODS.items():
        if config_class is BiasAdaptationConfig:
            continue
        docs = field_docs(config_class)
        for field in dataclasses.fields(config_class):
            fields.setdefault(field.name, []).append((name, field, docs.get(field.name, "")))
    return fields


def bias_start(text: str) -> float | str:
    """'calibrated', or a number (its range is checked with the config)."""
    return text if text == CALIBRATED else float(text)


bias_start.__name__ = "B|calibrated"  # argparse names the type in its error


def true_or_false(text: str) -> bool:
    """'true' or 'false' (any case); anything else is argparse's one-line error."""
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


true_or_false.__name__ = "true|false"  # argparse names the type in its error: "invalid true|false value"


def flag_type(field: dataclasses.Field):
    """argparse type of a config field from its annotation ('int', 'float | None', 'bool', ...)."""
    annotation = str(field.type)
    if annotation.startswith("bool"):
        return true_or_false
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def add_method_flags(group) -> None:
    """One flag per field of each baseline's config (--k, --l1-coefficient, ...), so new methods need no CLI code."""
    for name, owners in baseline_fields().items():
        methods = ", ".join(method for method, _, _ in owners)
        field, doc = owners[0][1], owners[0][2]
        default = field.default if field.default is not dataclasses.MISSING else None
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"method_{name}",
            type=flag_type(field),
            default=argparse.SUPPRESS,  # absent -> the config's default, stated in the help
            metavar=name.upper() if field.type != "bool" else "true|false",
            help=f"[{methods}] {doc} (default: {default})".replace("%", "%%"),
        )


def baseline_settings(args) -> dict:
    """The baseline flags given on the command line; one that the chosen method lacks is an error."""
    given = {name: getattr(args, f"method_{name}") for name in baseline_fields() if hasattr(args, f"method_{name}")}
    own = METHODS[args.method].setting_names()
    for name in given:
        if name not in own:
            raise ConfigError(f"{name}: not a setting of method {args.method!r} (its settings: {', '.join(sorted(own))})")
    return given


def model_from_args(args, features: np.ndarray | None) -> tuple[str, FeatureModel]:
    """The data source and the model of its samples: the planted model from its flags, or a world's n, d and s."""
    data = parse_data(args.data)
    settings = {name.removeprefix("model_"): value for name, value in vars(args).items() if name.startswith("model_")}
    if isinstance(settings.get("sparsity"), list):
        settings["sparsity"] = settings["sparsity"][0] if len(settings["sparsity"]) == 1 else tuple(settings["sparsity"])
    if "coefficient_range" in settings:
        settings["coefficient_range"] = tuple(settings["coefficient_range"])
    if is_world(data):
        settings = world_settings(data, settings, args.seed)
    elif features is not None:
        settings.update(n=features.shape[0], d=features.shape[1])
    return data, FeatureModel(**settings, seed=args.seed)


def config_from_args(args, features: np.ndarray | None) -> RecoverConfig:
    """Validate every setting and assemble the run's config (raises ConfigError before any work)."""
    data, model = model_from_args(args, features)
    bias_adaptation = {name: getattr(args, name) for name in BIAS_ADAPTATION_FLAGS if hasattr(args, name)}
    settings = baseline_settings(args)  # refuses another method's flags
    if METHODS[args.method] is BiasAdaptationConfig:
        settings = bias_adaptation
    elif bias_adaptation:
        raise ConfigError(f"{next(iter(bias_adaptation))}: a setting of methods 'ba' and 'gba', not of {args.method!r}")
    method_config = METHODS[args.method].from_settings(settings, model.feature_frequency, args.method)
    return RecoverConfig(
        model=model,
        sae=SAEConfig(width=args.width, tied=getattr(args, "tied", METHODS[args.method].tied_default),
                      initial_scale=args.initial_scale, pre_bias=getattr(args, "pre_bias", None)),
        method=args.method,
        method_config=method_config,
        train=TrainConfig(
            steps=args.steps, batch_size=args.batch_size, device=args.device,
            learning_rate=getattr(args, "learning_rate", None),
        ),
        seed=args.seed,
        data=data,
    )


def handle(args) -> int:
    # Flags without a default value are absent from `args` when not given (their help states the default).
    features_path, save_directory, threads = (getattr(args, name, None) for name in ("features", "save", "threads"))
    features = load_features(features_path) if features_path is not None else None
    config = config_from_args(args, features)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads: must be an integer >= 1, got {threads}")
        torch.set_num_threads(threads)
    if save_directory is not None:
        check_output_directory("save", save_directory, args.overwrite)
    check_memory(config)
    result = run(config, features=features, progress=not args.quiet)
    if save_directory is not None:
        save(result, save_directory)
    metrics = result.metrics
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "groups"}, indent=2))
    else:
        print(report(config, metrics))
    if save_directory is not None:
        print(f"saved to {save_directory}")
    return 0


def report(config: RecoverConfig, metrics: dict) -> str:
    """A short human-readable summary of one run."""
    model = config.model
    source = f"data={config.data} " if is_world(config.data) else ""
    lines = [
        f"{source}n={model.n} d={model.d} s={model.sparsity} (f={model.feature_frequency:.4g}) width={config.sae.width} "
        f"method={config.method} seed={config.seed}",
        f"FRR(0.8)  {metrics['frr_0.8']:.3f}   (random init {metrics['frr_init_0.8']:.3f})",
        f"FRR(0.9)  {metrics['frr_0.9']:.3f}   (random init {metrics['frr_init_0.9']:.3f})",
        f"MCC       {metrics['mcc']:.3f}",
        f"L0        {metrics['l0']:.2f}    (true mean s = {model.mean_sparsity:g})",
        f"dead      {metrics['dead_fraction']:.3f}",
        f"EV        {metrics['explained_variance']:.3f}",
    ]
    for k, group in enumerate(metrics.get("groups", [])):
        lines.append(
            f"group {k}: target {group['target_frequency']:.3g}  mean frequency {group['mean_frequency']:.3g}  "
            f"above target {group['fraction_above_target']:.3f}"
        )
    if "saelens_mcc" in metrics:
        lines.append(
            "SAELens   MCC {saelens_mcc:.3f}  precision {saelens_precision:.3f}  recall {saelens_recall:.3f}  "
            "F1 {saelens_f1_score:.3f}  EV {saelens_explained_variance:.3f}  L0 {saelens_sae_l0:.2f} "
            "(true {saelens_true_l0:.2f}; the width's most frequent features {world_width_l0:.2f})".format(**metrics)
        )
    lines.append(f"wall      {metrics['wall_seconds']:.1f} s")
    return "\n".join(lines)
