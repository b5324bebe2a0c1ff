"""`benchmarks/demo_curves.py`: which stage-2 variants run beside the config's own run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import demo_curves  # noqa: E402


def test_the_default_variants_leave_out_the_rate_the_configs_run_trains():
    assert demo_curves.variant_rates(None, {"fusion_learning_rate": 0.001}) == [0.0001]
    assert demo_curves.variant_rates(None, {"fusion_learning_rate": 0.01}) == [0.001, 0.0001]
    assert demo_curves.variant_rates(None, {}) == [0.001, 0.0001]
    assert demo_curves.variant_rates([], {"fusion_learning_rate": 0.01}) == []  # none asked: none run
    assert demo_curves.variant_rates([0.001], {"fusion_learning_rate": 0.001}) == [0.001]  # as asked
