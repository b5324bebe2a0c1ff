"""`benchmarks/demo.py`: a stored run of the demo says when the config has changed since it ran."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import demo  # noqa: E402


def test_a_run_names_the_settings_its_config_has_changed_since():
    then = {"fusion_learning_rate": 0.01, "seed": 0, "dtype": "bfloat16", "table_note": "old note"}
    run = {"command": "python examples/run_ctr.py demo.json", "config": demo.settings(then)}
    assert "table_note" not in run["config"]
    # only the note differs: the run is still what the config trains
    assert demo.changed_settings(run, "demo.json", {**then, "table_note": "a new note"}) == []
    now = {"fusion_learning_rate": 0.001, "seed": 0, "gate_init_alpha": 1.0}
    assert demo.changed_settings(run, "demo.json", now) == [
        "",
        '`demo.json` has changed since this run (`dtype` "bfloat16" → null, `fusion_learning_rate` 0.01 → 0.001, '
        "`gate_init_alpha` null → 1.0): it now trains another model.",
    ]
    # a run that kept no config
    assert demo.changed_settings({"command": run["command"]}, "demo.json", now) == []
    # the config is gone: render says so with the note
    assert demo.changed_settings(run, "demo.json", None) == []
