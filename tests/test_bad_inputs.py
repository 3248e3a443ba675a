"""Bad input gets one clear line and exit status 2 before any work starts: never a traceback."""

import pytest

from simulations.commands.gba import main

SPEC = """name = "tiny"
seeds = [0]
[fixed]
n = 16
d = 8
s = 2
steps = 2
"""


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.json").write_text("{}")
    (tmp_path / "spec.toml").write_text(SPEC)
    return tmp_path


CASES = [
    (["recover", "--seed", "99999999999999999999"], "seed: must lie in"),
    (["recover", "--save", "{tmp}/a_file"], "save: .* is a file"),
    (["recover", "--save", "{tmp}/full"], "save: .* is not empty; .*--overwrite"),
    (["recover", "--save", "{tmp}/a_file/run"], "save: cannot create or write"),
    (["recover", "--method", "topk", "--groups", "3"], "groups: a setting of methods 'ba' and 'gba', not of 'topk'"),
    (["recover", "--method", "ba", "--groups", "3"], "groups: method 'ba' has exactly 1 group"),
    (["recover", "--target-frequency", "2f", "--htf", "4f"], "highest_target: give either target_frequency or"),
    (["figures", "--results", "{tmp}/nowhere"], "results: .* is not a directory of result tables"),
    (["checks", "--results", "{tmp}/nowhere"], "results: .* is not a directory of result tables"),
    (["checks", "--verify", "no_such_grid"], "verify: no committed table for no_such_grid"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/a_file"], "out: .* is a file"),
    (["grid", "run", "{tmp}/spec.toml", "--out", "{tmp}/out", "--reuse", "{tmp}/nowhere"], "reuse: .* holds no grid points"),
    (["grid", "table", "{tmp}/full"], "has no grid.json"),
    (["llm", "frontier", "--seeds", "0", "--root", "{tmp}/out"], "seeds: must lie in \\[1, inf\\]"),
    (["llm", "frontier", "--l1", "-0.1", "--root", "{tmp}/out"], "l1_coefficient: must lie in"),
    (["llm", "frontier", "--topk", "--root", "{tmp}/out"], "--topk: expected at least one argument"),
    (["llm", "train", "--method", "topk", "--set", "kk=3", "--root", "{tmp}/out"], "kk not a setting of 'topk' \\(its settings: aux_coefficient"),
    (["grid", "status", "{tmp}/full"], "has no grid.json"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=lambda case: " ".join(case) if isinstance(case, list) else None)
def test_bad_input_is_one_line_with_status_2(paths, capsys, argv, message):
    import re

    try:
        status = main([arg.format(tmp=paths) for arg in argv])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (paths / "out").exists()  # nothing was started


def test_a_model_path_that_does_not_exist_is_one_line(paths, capsys):
    pytest.importorskip("transformers")
    assert main(["llm", "extract", "--model", str(paths / "no_model"), "--root", str(paths / "root")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model: " in err and "is not a directory" in err, err
