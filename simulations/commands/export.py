"""`gba export RUN_DIR --to saelens OUT_DIR`: a saved SAE in SAELens's format."""

from __future__ import annotations

from pathlib import Path

from simulations.experiments.export import export_saelens
from simulations.experiments.files import check_output_directory
from theory.validation import ConfigError


def register(parser) -> None:
    parser.description = ("Write cfg.json + sae_weights.safetensors that sae_lens.SAE.load_from_disk reads "
                          "(JumpReLU, or TopK for TopK SAEs), for a run saved by gba recover --save or gba llm train.")
    parser.add_argument("run_dir", type=Path, help="directory with sae.safetensors and config.json")
    parser.add_argument("--to", choices=["saelens"], default="saelens", help="target format (default: saelens)")
    parser.add_argument("out_dir", type=Path, help="directory to write, new or empty")
    parser.add_argument("--overwrite", action="store_true", help="let OUT_DIR be a directory that is not empty")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    if not args.run_dir.is_dir():
        raise ConfigError(f"run_dir: {str(args.run_dir)!r} is not a directory")
    check_output_directory("out_dir", args.out_dir, args.overwrite)
    out = export_saelens(args.run_dir, args.out_dir)
    print(f"wrote {out / 'cfg.json'} and {out / 'sae_weights.safetensors'}")
    return 0
