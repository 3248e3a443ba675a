"""The settled rule: the controller's update count as the run records it, FRR's late movement, the verdict."""

import pandas as pd
import pytest

from simulations.experiments.grid.convergence import (
    MAX_LATE_FRR_CHANGE, MIN_CONTROLLER_UPDATES, convergence_columns, derived_updates, late_frr_change,
)
from simulations.experiments.recover import RecoverConfig, run


@pytest.mark.parametrize("batch_size, interval", [(256, None), (100, 1000), (1000, 300)])
def test_the_update_count_derived_from_a_config_is_the_one_the_controller_makes(batch_size, interval):
    settings = {"n": 32, "d": 16, "s": 2, "width": 64, "steps": 40, "batch_size": batch_size, "eval_samples": 1024,
                "method": "ba", "target_frequency": "2f"}
    if interval is not None:
        settings["update_interval"] = interval
    config = RecoverConfig.from_settings(settings)
    result = run(config)
    row = pd.Series({**config.method_config.__dict__, "steps": 40, "batch_size": batch_size})
    assert derived_updates(row) == result.metrics["controller_updates"] > 0


def test_frr_movement_is_read_over_the_last_fifth():
    history = pd.DataFrame({"step": [10, 20, 30, 40, 50], "frr_0.9": [0.0, 0.5, 0.7, 0.9, 0.95]})
    assert late_frr_change(history) == pytest.approx(0.05)  # step 40 is the last within 80 % of 50
    assert pd.isna(late_frr_change(history.drop(columns="frr_0.9")))


def test_each_part_of_the_rule_can_unsettle_a_point():
    base = {"method": "ba", "steps": 100, "batch_size": 1000, "highest_target": 0.05, "groups": 1,
            "update_interval": 10000, "fraction_above_target": 0.0}
    rows = pd.DataFrame([
        {**base, "key": "settled"},
        {**base, "key": "few_updates", "update_interval": 100_000},  # 1 update
        {**base, "key": "above_target", "fraction_above_target": 0.05},
        {**base, "key": "still_moving"},
        {**base, "key": "no_history"},
        {**base, "key": "topk", "method": "topk"},
    ])
    flat = [0.9, 0.9, 0.9, 0.9, 0.9]
    history = pd.concat([pd.DataFrame({"key": key, "step": [20, 40, 60, 80, 100], "frr_0.9": frr})
                         for key, frr in [("settled", flat), ("few_updates", flat), ("above_target", flat),
                                          ("still_moving", [0.1, 0.3, 0.5, 0.7, 0.7 + 2 * MAX_LATE_FRR_CHANGE])]])
    table = convergence_columns(rows, history).set_index("key")
    assert table.loc["settled", "controller_updates"] >= MIN_CONTROLLER_UPDATES
    assert table["settled"].to_dict() == {"settled": True, "few_updates": False, "above_target": False,
                                          "still_moving": False, "no_history": False, "topk": None}
