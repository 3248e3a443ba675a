"""Bad input gets one clear line and exit status 2 before any work starts: never a traceback."""

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from simulations.commands.gba import main

SPEC = """name = "tiny"
seeds = [0]
[fixed]
n = 16
d = 8
s = 2
steps = 2
"""

BAD_SPECS = {
    "fixed_number": 'name = "x"\nfixed = 3\n',
    "variants_number": 'name = "x"\nvariants = 3\n',
    "axes_list": 'name = "x"\naxes = [1, 2]\n',
    "not_toml": "name = \n",
    "seeds_string": 'name = "x"\nseeds = "0"\n',
    "unknown_setting": 'name = "x"\n[fixed]\nnn = 3\n',
    "empty_axis": 'name = "x"\n[axes]\nd = []\n',
    "description_number": 'name = "x"\ndescription = 3\n',
    "s_equals_n": 'name = "x"\n[fixed]\nn = 16\nd = 8\ns = 16\n',
    "no_name": "[fixed]\nn = 16\n",
}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A tiny finished `gba recover --save` run."""
    run = tmp_path_factory.mktemp("saved") / "run"
    assert main(["recover", "--n", "16", "--d", "8", "--s", "2", "--width", "32", "--steps", "2", "--quiet", "--save", str(run)]) == 0
    return run


@pytest.fixture
def paths(tmp_path, saved_run):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.json").write_text("{}")
    (tmp_path / "spec.toml").write_text(SPEC)
    for name, text in BAD_SPECS.items():
        (tmp_path / f"{name}.toml").write_text(text)
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    (tmp_path / "truncated.safetensors").write_bytes((saved_run / "features.safetensors").read_bytes()[:60])
    features = torch.randn(16, 8)
    features[7] = features[3]
    save_file({"V": features}, str(tmp_path / "duplicates.safetensors"))
    save_file({"W": torch.randn(16, 8)}, str(tmp_path / "no_V.safetensors"))
    save_file({"V": torch.randn(16)}, str(tmp_path / "vector.safetensors"))
    for name in ("run", "bad_config", "not_a_run_config", "garbage_weights", "no_W_enc"):
        shutil.copytree(saved_run, tmp_path / name)
    (tmp_path / "bad_config" / "config.json").write_text("{")
    (tmp_path / "not_a_run_config" / "config.json").write_text("{}")
    (tmp_path / "garbage_weights" / "sae.safetensors").write_text("junk")
    tensors = load_file(str(tmp_path / "no_W_enc" / "sae.safetensors"))
    del tensors["W_enc"]
    save_file(tensors, str(tmp_path / "no_W_enc" / "sae.safetensors"))
    return tmp_path


CASES = [
    # gba recover: settings
    (["recover", "--seed", "99999999999999999999"], "seed: must lie in"),
    (["recover", "--n", "1"], "n: must lie in \\[2, inf\\], got 1"),
    (["recover", "--n", "2", "--s", "1"], "target_frequency: 2f \\(the default\\) is 1 with f = E\\[s\\]/n = 0.5, outside \\(0, 1\\)"),
    (["recover", "--n", "16", "--s", "16"], "sparsity \\(s\\): must lie in \\[1, n - 1\\] = \\[1, 15\\], got 16 \\(at s = n"),
    (["recover", "--n", "100000000"], "dead_frequency \\(epsilon\\): the default 1e-06 is not below the lowest target"),
    (["recover", "--width", "100000000"], "width x batch_size: the run needs about .* GB .* free on cpu; lower width or batch_size"),
    (["recover", "--batch-size", "100000000"], "width x batch_size: the run needs about"),
    (["recover", "--s", "2", "0"], "sparsity \\(s\\): must lie in \\[1, inf\\], got 0"),
    (["recover", "--coefficient-range", "2", "1"], "coefficient_range high: must lie in"),
    (["recover", "--noise-std", "-1"], "noise_std: must lie in \\[0, inf\\), got -1"),
    (["recover", "--steps", "0"], "steps: must lie in \\[1, inf\\], got 0"),
    (["recover", "--threads", "0"], "threads: must be an integer >= 1, got 0"),
    (["recover", "--method", "topk", "--k", "0"], "k: must lie in \\[1, inf\\], got 0"),
    (["recover", "--method", "gba", "--groups", "0"], "groups: must lie in \\[1, inf\\], got 0"),
    (["recover", "--update-interval", "0"], "update_interval: must lie in \\[1, inf\\], got 0"),
    (["recover", "--initial-scale", "-1"], "initial_scale: must lie in \\(0, inf\\), got -1"),
    (["recover", "--pre-bias", "mean"], "invalid choice: .mean."),
    (["recover", "--frequency-decay", "-1"], "frequency_decay: must lie in \\[0, 4\\], got -1"),
    (["recover", "--target-frequency", "1.5"], "target_frequency: must lie in \\(0, 1\\), got 1.5"),
    (["recover", "--target-frequency", "abc"], "target_frequency"),
    (["recover", "--method", "gba", "--htf", "0.01", "--ltf", "0.1"], "lowest_target"),
    (["recover", "--method", "topk", "--groups", "3"], "groups: a setting of methods 'ba' and 'gba', not of 'topk'"),
    (["recover", "--method", "ba", "--groups", "3"], "groups: method 'ba' has exactly 1 group"),
    (["recover", "--target-frequency", "2f", "--htf", "4f"], "highest_target: give either target_frequency or"),
    (["recover", "--method", "nope"], "argument --method: invalid choice: 'nope'"),
    (["recover", "--tied", "maybe"], "argument --tied: invalid true\\|false value: 'maybe'"),
    # gba recover: files
    (["recover", "--features", "{tmp}/text.safetensors"], "features: .* is not a readable safetensors file"),
    (["recover", "--features", "{tmp}/truncated.safetensors"], "features: .* is not a readable safetensors file"),
    (["recover", "--features", "{tmp}/dir"], "features: .* is a directory, not a safetensors file"),
    (["recover", "--features", "{tmp}/nowhere.safetensors"], "features: no such file"),
    (["recover", "--features", "{tmp}/duplicates.safetensors"], "features: rows 3 and 7 .*same direction"),
    (["recover", "--features", "{tmp}/no_V.safetensors"], "features: .* has no tensor named 'V' \\(found \\['W'\\]\\)"),
    (["recover", "--features", "{tmp}/vector.safetensors"], "features: V must be a non-empty n x d matrix"),
    (["recover", "--save", "{tmp}/a_file"], "save: .* is a file"),
    (["recover", "--save", "{tmp}/full"], "save: .* is not empty; .*--overwrite"),
    (["recover", "--save", "{tmp}/a_file/run"], "save: cannot create or write"),
    # gba grid
    (["grid", "run", "{tmp}/fixed_number.toml", "--out", "{tmp}/out"], "spec: fixed must be a table \\(\\[fixed\\]\\), got 3"),
    (["grid", "run", "{tmp}/variants_number.toml", "--out", "{tmp}/out"], "spec: variants must be a list, got 3"),
    (["grid", "run", "{tmp}/axes_list.toml", "--out", "{tmp}/out"], "spec: axes must be a table \\(\\[axes\\]\\), got \\[1, 2\\]"),
    (["grid", "run", "{tmp}/not_toml.toml", "--out", "{tmp}/out"], "spec: .* is not valid TOML"),
    (["grid", "run", "{tmp}/seeds_string.toml", "--out", "{tmp}/out"], "spec: seeds must be a list, got '0'"),
    (["grid", "run", "{tmp}/unknown_setting.toml", "--out", "{tmp}/out"], "unknown setting\\(s\\) nn"),
    (["grid", "run", "{tmp}/empty_axis.toml", "--out", "{tmp}/out"], "axes.d: must be a non-empty list of values"),
    (["grid", "run", "{tmp}/description_number.toml", "--out", "{tmp}/out"], "spec: description must be a string, got 3"),
    (["grid", "run", "{tmp}/s_equals_n.toml", "--out", "{tmp}/out"], "sparsity \\(s\\): must lie in \\[1, n - 1\\]"),
    (["grid", "run", "{tmp}/no_name.toml", "--out", "{tmp}/out"], "name: a grid spec needs a non-empty string name"),
    (["grid", "run", "{tmp}/dir", "--out", "{tmp}/out"], "spec: .* is a directory, not a TOML grid spec"),
    (["grid", "run", "{tmp}/nowhere.toml", "--out", "{tmp}/out"], "spec: no such file"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/a_file"], "out: .* is a file"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/out", "--jobs", "0"], "jobs: must be an integer >= 1, got 0"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/out", "--stack", "0"], "stack: must be an integer >= 1, got 0"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/out", "--threads", "0"], "threads: must be an integer >= 1, got 0"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/out", "--time-limit", "-1"], "time_limit: must be a number of seconds >= 0, got -1.0"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/out", "--backend", "dask"], "scheduler: --backend dask needs --scheduler"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/out", "--reuse", "{tmp}/nowhere"], "reuse: .* holds no grid points"),
    (["grid", "table", "{tmp}/full"], "has no grid.json"),
    (["grid", "status", "{tmp}/full"], "has no grid.json"),
    (["grid", "settle", "{tmp}/dir"], "tables: no results.csv in .*dir"),
    # gba export
    (["export", "{tmp}/bad_config", "{tmp}/out"], "run_dir: .*config.json' does not read as JSON"),
    (["export", "{tmp}/not_a_run_config", "{tmp}/out"], "run_dir: .*config.json' is not a run's config"),
    (["export", "{tmp}/garbage_weights", "{tmp}/out"], "run_dir: .*sae.safetensors' is not a readable safetensors file"),
    (["export", "{tmp}/no_W_enc", "{tmp}/out"], "run_dir: .*lacks tensor\\(s\\) W_enc"),
    (["export", "{tmp}/nowhere", "{tmp}/out"], "run_dir: .* is not a directory"),
    (["export", "{tmp}/a_file", "{tmp}/out"], "run_dir: .* is not a directory"),
    (["export", "{tmp}/run", "{tmp}/a_file"], "out_dir: .* is a file, not a directory"),
    (["export", "{tmp}/run", "{tmp}/full"], "out_dir: .* is not empty; choose a new directory or add --overwrite"),
    # gba figures, checks, bench
    (["figures", "--results", "{tmp}/nowhere"], "results: .* is not a directory of result tables"),
    (["figures", "--only", "no_such_figure"], "only: unknown figure\\(s\\) no_such_figure \\(registered: "),
    (["figures", "--out", "{tmp}/a_file"], "out: .* is a file, not a directory"),
    (["checks", "--results", "{tmp}/nowhere"], "results: .* is not a directory of result tables"),
    (["checks", "--verify", "no_such_grid"], "verify: no committed table for no_such_grid"),
    (["checks", "--verify", "frontier", "--points", "0"], "points: must be an integer >= 1, got 0"),
    (["checks", "--out", "{tmp}/dir"], "out: .* is a directory; give a file name"),
    (["bench", "--json", "{tmp}/dir"], "json: .* is a directory; give a file name"),
    (["bench", "--json", "{tmp}/a_file/bench.json"], "json: cannot create or write"),
    # gba llm (every check comes before the model loads)
    (["llm", "extract", "--tokens", "0", "--root", "{tmp}/out"], "tokens: must lie in \\[1, inf\\], got 0"),
    (["llm", "extract", "--layer", "-1", "--root", "{tmp}/out"], "layer: must lie in \\[0, inf\\], got -1"),
    (["llm", "extract", "--context", "0", "--root", "{tmp}/out"], "context: must lie in \\[2, 65536\\], got 0"),
    (["llm", "extract", "--drop-first", "500", "--root", "{tmp}/out"], "drop_first: must lie in \\[0, 127\\], got 500"),
    (["llm", "extract", "--threads", "0", "--root", "{tmp}/out"], "threads: must be at least 1, got 0"),
    (["llm", "extract", "--root", "{tmp}/a_file"], "root: .* is a file, not a directory"),
    (["llm", "train", "--width", "0", "--root", "{tmp}/out"], "width: must lie in \\[1, inf\\], got 0"),
    (["llm", "train", "--learning-rate", "-1", "--root", "{tmp}/out"], "learning_rate: must lie in \\(0, 1\\], got -1"),
    (["llm", "train", "--checkpoint-every", "30", "--root", "{tmp}/out"], "checkpoint_every: must be a multiple of log_every \\(25\\), got 30"),
    (["llm", "train", "--method", "topk", "--set", "k", "--root", "{tmp}/out"], "set: must look like NAME=VALUE, got 'k'"),
    (["llm", "train", "--method", "topk", "--set", "k=abc", "--root", "{tmp}/out"], "k: must be an integer, got 'abc'"),
    (["llm", "train", "--method", "topk", "--set", "kk=3", "--root", "{tmp}/out"], "kk not a setting of 'topk' \\(its settings: aux_coefficient"),
    (["llm", "train", "--seed", "-1", "--root", "{tmp}/out"], "seed: must lie in \\[0, "),
    (["llm", "train", "--out", "{tmp}/a_file", "--root", "{tmp}/out"], "out: .* is a file, not a directory"),
    (["llm", "eval", "{tmp}/run"], "run_dir: .* has no finished run \\(no done.json\\)"),
    (["llm", "frontier", "--seeds", "0", "--root", "{tmp}/out"], "seeds: must lie in \\[1, inf\\]"),
    (["llm", "frontier", "--l1", "-0.1", "--root", "{tmp}/out"], "l1: -0.1 is not a valid l1_coefficient of 'relu-l1'"),
    (["llm", "frontier", "--ba", "2", "--root", "{tmp}/out"], "ba: 2.0 is not a valid target_frequency of 'ba'"),
    (["llm", "frontier", "--topk", "0", "--root", "{tmp}/out"], "topk: 0 is not a valid k of 'topk'"),
    (["llm", "frontier", "--snapshots", "150", "--root", "{tmp}/out"], r"snapshots: 150 are not valid snapshot steps \(snapshot_steps: each must be a multiple of checkpoint_every \(100\), got 150\)"),
    (["llm", "frontier", "--snapshots", "400", "--root", "{tmp}/out"], r"snapshots: 400 are not valid snapshot steps \(snapshot_steps: must lie in \[1, 399\]"),
    (["llm", "frontier", "--results", "{tmp}/a_file", "--root", "{tmp}/out"], "results: .* is a file, not a directory"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=lambda case: " ".join(case) if isinstance(case, list) else None)
def test_bad_input_is_one_line_with_status_2(paths, capsys, argv, message):
    try:
        status = main([arg.format(tmp=paths) for arg in argv])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (paths / "out").exists()  # nothing was started


def test_the_table_covers_every_subcommand():
    assert len(CASES) >= 60
    assert {argv[0] for argv, _ in CASES} == {"recover", "grid", "export", "figures", "checks", "bench", "llm"}


def test_a_model_path_that_does_not_exist_is_one_line(paths, capsys):
    pytest.importorskip("transformers")
    assert main(["llm", "extract", "--model", str(paths / "no_model"), "--root", str(paths / "root")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model: " in err and "is not a directory" in err, err
