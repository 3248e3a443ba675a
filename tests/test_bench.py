import json

import torch

from simulations.benchmark import run as bench
from simulations.commands import bench as bench_command
from simulations.commands.gba import build_parser


def test_bench_is_a_gba_command():
    args = build_parser().parse_args(["bench", "--quick", "--json", "out.json"])
    assert args.quick and str(args.json) == "out.json" and args.handler is bench_command.handle


def test_controller_record_states_time_and_memory():
    record = bench.controller_record(16, 512, 1, torch.device("cpu"), step_seconds=1.0)
    assert record["controller_seconds_per_step"] > 0
    assert record["controller_bytes"] == 512 * (8 + 4)  # int64 counts + fp32 maxima: O(M)
    assert record["buffered_bytes"] == 512 * record["update_interval"] * 4


def test_step_records_have_their_keys_and_a_table(tmp_path):
    records = bench.step_records([(16, 256)], ["gba"], 2, torch.device("cpu"), peak=100.0, with_dense=True)
    assert [r["variant"] for r in records] == ["sparse", "dense"]
    for record in records:
        for key in ("method", "d", "width", "batch", "step_seconds", "encoder_matmul_seconds", "ratio_to_matmul"):
            assert key in record, key
        # The biases were settled before timing: the timed steps are steady-state steps, not the dense start
        # (at bias 0 about half of the 256 codes fire).
        assert 0 < record["l0"] < 0.05 * 256, record["l0"]
    text = bench.table([{"kind": "step", **r} for r in records])
    assert "ratio_to_matmul" in text and "gba" in text
    json.dumps(records)


def test_the_command_line_sets_a_short_openmp_spin_unless_the_environment_has_one():
    import os
    import subprocess
    import sys

    script = "import os, simulations.commands; print(os.environ['GOMP_SPINCOUNT'])"
    environment = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    assert subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True).stdout.strip() == "1000"
    environment["GOMP_SPINCOUNT"] = "5"
    assert subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True).stdout.strip() == "5"


def test_a_paper_scale_point_is_timed_by_part_against_its_matmul():
    """The paper-scale record's machinery on a small instance: a calibrated BA run that trains sparse
    from its first step, is evaluated, and states its time per part and its peak memory."""
    small = {**bench.PAPER_SCALE, "n": 256, "d": 24, "width": 1024, "batch_size": 256, "eval_samples": 512}
    record = bench.paper_scale_point(3, small)
    assert record["kind"] == "paper_scale" and (record["n"], record["width"], record["steps"]) == (256, 1024, 3)
    assert 0 < record["l0"] < 0.05 * 1024  # sparse, as calibrated to p = 2.4f
    for key in ("train_seconds", "encoder_matmul_seconds", "evaluation_seconds", "initial_frr_seconds", "peak_rss_gib"):
        assert record[key] > 0, key
    json.dumps(record)


def test_jumprelu_steps_are_timed_from_trained_like_thresholds():
    records = bench.step_records([(16, 256)], ["jumprelu"], 2, torch.device("cpu"), peak=100.0, with_dense=False)
    assert "error" not in records[0], records[0]
    assert 0 < records[0]["l0"] < 0.2 * 256  # thresholds set for about TopK's k codes a sample
