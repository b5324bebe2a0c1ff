"""`benchmarks/demo_curves.py`: which stage-2 variants run beside the config's own run, and how long a run took."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import demo_curves  # noqa: E402


def test_the_default_variants_leave_out_the_rate_the_configs_run_trains():
    assert demo_curves.variant_rates(None, {"fusion_learning_rate": 0.001}) == [0.0001]
    assert demo_curves.variant_rates(None, {"fusion_learning_rate": 0.01}) == [0.001, 0.0001]
    assert demo_curves.variant_rates(None, {}) == [0.001, 0.0001]
    assert demo_curves.variant_rates([], {"fusion_learning_rate": 0.01}) == []  # none asked: none run
    assert demo_curves.variant_rates([0.001], {"fusion_learning_rate": 0.001}) == [0.001]  # as asked


def test_a_run_not_timed_here_is_timed_from_its_first_file_to_its_last(tmp_path):
    for name, stamp in (("run_ctr.json", 1_000.0), ("all_results.json", 4_228.5)):
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (stamp, stamp))
    assert demo_curves.unrecorded_wall(tmp_path) == pytest.approx(3_228.5)
    (tmp_path / "all_results.json").unlink()  # an unfinished run has no time
    with pytest.raises(FileNotFoundError, match="all_results.json"):
        demo_curves.unrecorded_wall(tmp_path)
