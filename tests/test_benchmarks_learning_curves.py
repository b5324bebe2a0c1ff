"""`benchmarks/learning_curves.py`: which CPU kind's section the curves are filed under."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import learning_curves  # noqa: E402
from report import provenance_line  # noqa: E402

HERE = {"cpu_kind": "AVX2", "command": "python benchmarks/learning_curves.py", "dtype": "n/a"}


def test_curves_restored_from_another_kinds_archive_are_filed_under_the_kind_that_trained_them():
    filed = learning_curves.trained_on(HERE, "AMX")
    assert filed["cpu_kind"] == "AMX" and HERE["cpu_kind"] == "AVX2"  # the machine's own record is left alone
    assert "rows trained on AMX, tabulated on AVX2" in provenance_line(filed)
    assert learning_curves.trained_on(HERE, None) is HERE
    assert learning_curves.trained_on(HERE, "AVX2") is HERE


def test_a_row_scoring_a_shared_stage_is_reported_finished_not_as_not_started(tmp_path):
    (tmp_path / "gate_lightgcn_stage1_only" / "gate").mkdir(parents=True)
    (tmp_path / "gate_lightgcn_stage1_only" / "gate" / "all_results.json").write_text("{}")
    (tmp_path / "text" / "text").mkdir(parents=True)  # started, nothing written yet
    curves = {"gate_lightgcn": {"stage_1_lora": {"state": "finished", "points": []}}}
    shared = learning_curves.finished_without_stages(tmp_path, curves)
    assert shared == ["gate_lightgcn_stage1_only"]
    entry = {
        "class_counts": None,
        "eval_rows": 2000,
        "eval_steps": 200,
        "rows_per_step": 16,
        "output_dir": str(tmp_path),
        "curves": {},
        "finished_without_own_stages": shared,
    }
    lines = learning_curves.render(entry)
    assert lines[-3] == (
        "Finished without a stage of their own (they score another row's shared stage): gate_lightgcn_stage1_only."
    )
    assert "gate_lightgcn_stage1_only" not in lines[-1] and "text" in lines[-1]
