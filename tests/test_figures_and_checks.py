from pathlib import Path

import pandas as pd
import pytest

from simulations.reports import claims, plots
from simulations.reports.claims import CLAIMS, NO_VERDICT, Measurement, claim, render
from simulations.commands.gba import main
from simulations.reports.plots import FIGURES, figure
from simulations.reports.tables import load_results


@pytest.fixture
def registries():
    """Snapshot and restore the registries so test entries do not leak."""
    plots.load_all(), claims.load_all()
    saved = dict(FIGURES), dict(CLAIMS)
    yield
    FIGURES.clear(), FIGURES.update(saved[0])
    CLAIMS.clear(), CLAIMS.update(saved[1])


def test_a_registered_figure_is_drawn_from_its_table_and_a_missing_table_is_skipped(tmp_path, registries, capsys):
    results = tmp_path / "results"
    (results / "toy").mkdir(parents=True)
    pd.DataFrame({"x": [1, 2, 3], "y": [0.1, 0.5, 0.9]}).to_csv(results / "toy" / "results.csv", index=False)

    @figure("toy_line")
    def toy_line(results: Path, out: Path) -> Path:
        import matplotlib.pyplot as plt

        table = load_results(results, "toy")
        fig, ax = plt.subplots()
        ax.plot(table["x"], table["y"])
        path = out / "toy_line.png"
        fig.savefig(path)
        plt.close(fig)
        return path

    @figure("needs_missing")
    def needs_missing(results: Path, out: Path) -> Path:
        load_results(results, "absent")

    out = tmp_path / "figures"
    assert main(["figures", "--results", str(results), "--out", str(out), "--only", "toy_line", "needs_missing"]) == 0
    assert (out / "toy_line.png").stat().st_size > 1000
    assert "skipped needs_missing" in capsys.readouterr().out
    assert main(["figures", "--results", str(results), "--out", str(out), "--only", "needs_missing", "--strict"]) == 1
    assert main(["figures", "--only", "no_such_figure"]) == 2


def test_checks_render_claims_in_order_with_pending_rows_and_notes(tmp_path, registries):
    CLAIMS.clear()
    results = tmp_path / "results"
    (results / "toy").mkdir(parents=True)
    pd.DataFrame({"frr": [0.5, 1.0]}).to_csv(results / "toy" / "results.csv", index=False)

    @claim("10", "second | claim", paper="100 %", command="gba grid run toy", rule="partly if FRR < 1", figure="toy_line")
    def second(results):
        frr = load_results(results, "toy")["frr"].mean()
        return Measurement(f"FRR = {frr:.2f}", "partly", note="lower than the paper")

    @claim("2", "first claim", paper="x", command="gba grid run absent", rule="any")
    def first(results):
        load_results(results, "absent")

    text = render(results)
    claims_part = text.split("## Claims")[1]
    rows = [line for line in claims_part.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert rows[0].startswith("| 2 |") and "not measured yet" in rows[0] and "absent" in rows[0]
    assert rows[1].startswith("| 10 |") and "FRR = 0.75" in rows[1] and "second \\| claim" in rows[1]
    assert rows[1].endswith("| partly if FRR < 1 | partly |")  # the rule stands beside its verdict
    assert "**Claim 10.** lower than the paper" in text and "figures/toy_line.png" in text
    with pytest.raises(ValueError, match="verdict"):
        Measurement("x", "sort of")


def test_a_claim_on_an_unsettled_point_gets_no_verdict_and_no_note(tmp_path, registries):
    CLAIMS.clear()
    results = tmp_path / "results"
    (results / "grid").mkdir(parents=True)
    points = pd.DataFrame({"method": ["ba", "topk"], "frr_0.9": [1.0, 1.0], "settled": [False, None]})
    points.to_csv(results / "grid" / "results.csv", index=False)

    @claim("5", "recovers", paper="100 %", command="gba grid run grid", rule="reproduced if FRR = 1")
    def recovers(results):
        return Measurement(f"FRR = {load_results(results, 'grid')['frr_0.9'].mean():.2f}", "reproduced", note="why")

    row = next(line for line in render(results).split("## Claims")[1].splitlines() if line.startswith("| 5 |"))
    assert row.endswith(f"| {NO_VERDICT} |") and "FRR = 1.00 Unsettled BA/GBA points: grid 1 of 1." in row
    points.assign(settled=[True, None]).to_csv(results / "grid" / "results.csv", index=False)
    text = render(results)
    assert "| 5 |" in text and "| reproduced |" in text and "**Claim 5.** why" in text


def test_a_claim_on_another_methods_rows_keeps_its_verdict(tmp_path, registries):
    CLAIMS.clear()
    (tmp_path / "grid").mkdir()
    points = pd.DataFrame({"method": ["gba", "topk"], "frr_0.9": [0.2, 1.0], "settled": [False, None]})
    points.to_csv(tmp_path / "grid" / "results.csv", index=False)
    claim("11", "TopK recovers", paper="100 %", command="y", rule="r")(
        lambda results: Measurement(f"FRR = {load_results(results, 'grid', methods=('topk',))['frr_0.9'].mean():.2f}", "reproduced"))
    claim("10", "GBA recovers", paper="100 %", command="y", rule="r")(
        lambda results: Measurement(f"FRR = {load_results(results, 'grid', methods=('gba',))['frr_0.9'].mean():.2f}", "not reproduced"))
    rows = [line for line in render(tmp_path).split("## Claims")[1].splitlines() if line.startswith("| 1")]
    assert rows[0].startswith("| 10 |") and rows[0].endswith(f"| {NO_VERDICT} |") and "FRR = 0.20" in rows[0]
    assert rows[1].startswith("| 11 |") and rows[1].endswith("| reproduced |") and "FRR = 1.00" in rows[1]


def test_a_claim_reading_some_configurations_is_judged_by_their_settledness_alone(tmp_path, registries):
    CLAIMS.clear()
    (tmp_path / "grid").mkdir()
    points = pd.DataFrame({"method": ["gba", "gba", "gba", "topk"], "controller": ["paper", "paper", "proportional", None],
                           "highest_target": [0.1, 4 * (11 / 2048), 0.1, None], "frr_0.9": [0.6, 0.2, 0.9, 1.0],
                           "settled": [True, True, False, None]})
    points.to_csv(tmp_path / "grid" / "results.csv", index=False)
    paper_rows = load_results(tmp_path, "grid", where={"controller": "paper"})
    assert paper_rows["frr_0.9"].tolist() == [0.6, 0.2, 1.0]  # rows without a controller are kept
    # numbers are matched to float precision (4f / f need not be exactly 4), a tuple is any of its values
    assert load_results(tmp_path, "grid", methods=("gba",), where={"highest_target": 0.021484375 * (1 + 1e-12)})["frr_0.9"].tolist() == [0.2]
    assert len(load_results(tmp_path, "grid", methods=("gba",), where={"highest_target": (0.1, 0.5)})) == 2
    claim("18", "paper controller", paper="x", command="y", rule="r")(
        lambda results: Measurement(str(len(load_results(results, "grid", where={"controller": "paper"}))), "reproduced"))
    claim("19", "every controller", paper="x", command="y", rule="r")(
        lambda results: Measurement(str(len(load_results(results, "grid", where={"controller": ("paper", "proportional")}))), "reproduced"))
    rows = [line for line in render(tmp_path).split("## Claims")[1].splitlines() if line.startswith("| 1")]
    assert rows[0].endswith("| reproduced |") and rows[1].endswith(f"| {NO_VERDICT} |")


def test_figures_ring_the_unsettled_runs_and_count_them():
    import matplotlib.pyplot as plt

    from simulations.reports.plots import mark_unsettled, unsettled_counts

    table = pd.DataFrame({"x": [1, 2, 3, 4], "y": [0.1, 0.5, 0.9, 0.7], "method": ["ba", "ba", "gba", "topk"],
                          "settled": [False, True, False, None]})
    fig, ax = plt.subplots()
    mark_unsettled(ax, table, "x", "y")
    rings = ax.collections[-1]
    assert rings.get_label() == "unsettled run (ring): 2 of 3"
    assert rings.get_offsets().tolist() == [[1.0, 0.1], [3.0, 0.9]]
    assert rings.get_facecolors().size == 0  # hollow
    plt.close(fig)
    assert unsettled_counts(table, "method").to_dict() == {"ba": "1/2 unsettled", "gba": "1/1 unsettled", "topk": ""}


def test_a_grid_table_without_convergence_columns_is_pending(tmp_path, registries):
    CLAIMS.clear()
    (tmp_path / "grid").mkdir()
    pd.DataFrame({"method": ["ba"], "frr_0.9": [1.0]}).to_csv(tmp_path / "grid" / "results.csv", index=False)
    claim("5", "recovers", paper="x", command="y", rule="r")(lambda results: Measurement(str(load_results(results, "grid")), "reproduced"))
    assert "gba grid settle" in render(tmp_path)


def test_committed_paper_checks_is_regenerated_not_edited():
    assert main(["checks", "--check"]) == 0


def test_the_scale_of_a_table_is_read_from_it():
    from simulations.reports.tables import scale_text

    table = pd.DataFrame({"n": [128, 128], "d": [42, 42], "sparsity": ["[3, 20]"] * 2, "width": [512, 1024],
                          "tied": [True, False], "steps": [2400, 2400], "batch_size": [512, 512]})
    assert scale_text(table) == "n = 128, d = 42, s = [3, 20], tied/untied SAE width 4n/8n, 2400 steps of 512"


def test_the_opening_is_the_smallest_d_from_which_every_larger_d_recovers():
    from simulations.reports.tables import opening_dimensions

    frr = {256: [0.1, 0.95, 0.5, 0.95, 1.0], 1024: [0.0, 0.0, 0.1, 0.2, 0.5], 4096: [0.9, 0.9, 1.0, 1.0, 1.0]}
    ds = [16, 23, 32, 45, 64]
    table = pd.DataFrame([{"n": n, "d": d, "seed": seed, "frr_0.9": value + (0.02 if seed else -0.02)}
                          for n, values in frr.items() for d, value in zip(ds, values) for seed in (0, 1)])
    openings = opening_dimensions(table).set_index("n")
    assert (openings.loc[256, "opening"], openings.loc[256, "below"]) == (45, 32)
    assert pd.isna(openings.loc[1024, "opening"]) and openings.loc[1024, "below"] == 64
    assert openings.loc[4096, "opening"] == 16 and pd.isna(openings.loc[4096, "below"])


@pytest.mark.parametrize("openings, verdict", [({256: 23, 1024: 32, 4096: 45}, "reproduced"),
                                               ({256: 23, 1024: 45, 4096: 91}, "not reproduced"),
                                               ({256: 23, 1024: None, 4096: None}, "not testable here")])
def test_the_opening_law_claim_tells_log_growth_from_root_n_growth(tmp_path, openings, verdict):
    from simulations.reports.claims.grids import opening_law

    ds = [16, 23, 32, 45, 64, 91, 128, 181, 256]
    rows = [{"method": "ba", "settled": True, "n": n, "d": d, "seed": 0, "sparsity": 3, "width": 4 * n, "tied": True,
             "steps": 1200, "batch_size": n, "feature_frequency": 3 / n,
             "frr_0.9": float(opening is not None and d >= opening)}
            for n, opening in openings.items() for d in ds]
    (tmp_path / "opening_law").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "opening_law" / "results.csv", index=False)
    measurement = opening_law(tmp_path)
    assert measurement.verdict == verdict, measurement.measured
