"""SAELens's format: an SAE's tensors in its names and layout, and a saved run converted for `SAE.load_from_disk`.

A run directory (synthetic `gba recover --save`, or an LLM run) holds `sae.safetensors` in
SAELens's names for unit-norm inputs (W_enc = W^T, W_dec = diag(a) W, b_dec = b_pre, and for
BA/GBA b_enc = 0, threshold = -b; `sae_tensors`) and `config.json`. SAELens's forward pass is

    x_in = c(x) x,   h = (x_in - b_dec) W_enc + b_enc,   z = h 1[h > threshold],   x_hat = (z W_dec + b_dec) / c(x).

Our SAE sees x / ||x||. SAELens's "constant_norm_rescale" normalisation has c(x) = sqrt(d) / ||x||,
so sqrt(d) times our unit-norm input; since h, z and x_hat are then sqrt(d) times ours, multiplying
b_dec, b_enc and threshold by sqrt(d) (W_enc, W_dec unchanged) makes SAELens's x_hat equal ours in
the model's units. Runs trained without input normalisation export with "none" and no rescaling.
TopK SAEs (no threshold tensor) export as SAELens's "topk" architecture with their k.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from simulations.experiments.files import atomic_path, read_json, write_atomically
from theory.validation import ConfigError

DEFAULT_TOPK = 32


def sae_tensors(sae, method) -> dict[str, np.ndarray]:
    """The SAE in SAELens's JumpReLU names and layout: W_enc (d, M), W_dec (M, d), b_enc, b_dec, threshold."""
    tensors = {
        "W_enc": sae.weight.detach().T.contiguous(),
        "W_dec": sae.decoder_weight.detach().contiguous(),
        "b_dec": sae.pre_bias.detach(),
        **method.export(),
    }
    return {name: tensor.cpu().numpy().astype(np.float32) for name, tensor in tensors.items()}


def _run_settings(config: dict) -> tuple[str, dict, bool, dict]:
    """(method, method settings, inputs normalised?, metadata) of a synthetic or an LLM run's config.json."""
    if "cache" in config:  # an LLM run (simulations.experiments.llm.runs)
        manifest_path = Path(config["cache"]) / "manifest.json"
        identity = json.loads(manifest_path.read_text())["identity"] if manifest_path.is_file() else {}
        hook = {"mlp": "hook_mlp_out", "residual": "hook_resid_post"}.get(identity.get("site"), None)
        metadata = {
            "model_name": identity.get("model"),
            "hook_name": f"blocks.{identity['layer']}.{hook}" if hook else None,
            "context_size": identity.get("context"),
            "prepend_bos": False,
        }
        return config["method"], config.get("method_settings", {}), config["train"]["normalise_inputs"], metadata
    return config["method"], config.get("method_config", {}), config["train"]["normalise_inputs"], {"model_name": "synthetic"}


def export_saelens(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `cfg.json` and `sae_weights.safetensors` for SAELens's `SAE.load_from_disk(out_dir)`."""
    from safetensors.numpy import load_file, save_file

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    weights_path, config_path = run_dir / "sae.safetensors", run_dir / "config.json"
    if not weights_path.is_file() or not config_path.is_file():
        raise ConfigError(f"run_dir: {run_dir} needs sae.safetensors and config.json (gba recover --save, or a finished gba llm run)")
    config = read_json(config_path, "run_dir")
    if not isinstance(config.get("method"), str) or not isinstance(config.get("train"), dict) or "normalise_inputs" not in config["train"]:
        raise ConfigError(f"run_dir: {str(config_path)!r} is not a run's config (it needs 'method' and 'train.normalise_inputs')")
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own error type for every kind of bad file
        raise ConfigError(f"run_dir: {str(weights_path)!r} is not a readable safetensors file ({error})") from None
    check_tensors(tensors, weights_path)
    method, settings, normalised, metadata = _run_settings(config)
    d, width = tensors["W_enc"].shape
    scale = math.sqrt(d) if normalised else 1.0
    weights = {
        "W_enc": tensors["W_enc"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"] * scale,
        "b_enc": tensors["b_enc"] * scale,
    }
    cfg = {
        "d_in": int(d),
        "d_sae": int(width),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "constant_norm_rescale" if normalised else "none",
        "reshape_activations": "none",
        "metadata": {key: value for key, value in {**metadata, "gba_method": method}.items() if value is not None},
    }
    if "threshold" in tensors:
        weights["threshold"] = tensors["threshold"] * scale
        cfg["architecture"] = "jumprelu"
    else:
        cfg["architecture"] = "topk"
        cfg["k"] = int(settings.get("k", DEFAULT_TOPK))
    with atomic_path(out_dir / "sae_weights.safetensors") as path:
        save_file({name: value.astype("float32") for name, value in weights.items()}, str(path))
    write_atomically(out_dir / "cfg.json", json.dumps(cfg, indent=2) + "\n")
    return out_dir


def check_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """The saved SAE's tensors are all there, with consistent shapes: W_enc (d, M), W_dec (M, d), b_dec (d,), b_enc and threshold (M,)."""
    missing = sorted({"W_enc", "W_dec", "b_dec", "b_enc"} - set(tensors))
    if missing:
        raise ConfigError(f"run_dir: {str(path)!r} lacks tensor(s) {', '.join(missing)} (found {', '.join(sorted(tensors)) or 'none'})")
    if tensors["W_enc"].ndim != 2:
        raise ConfigError(f"run_dir: W_enc in {str(path)!r} must be a (d, M) matrix, got shape {tensors['W_enc'].shape}")
    d, width = tensors["W_enc"].shape
    expected = {"W_dec": (width, d), "b_dec": (d,), "b_enc": (width,), "threshold": (width,)}
    for name, shape in expected.items():
        if name in tensors and tensors[name].shape != shape:
            raise ConfigError(f"run_dir: {name} in {str(path)!r} must have shape {shape} to match W_enc {(d, width)}, got {tensors[name].shape}")
