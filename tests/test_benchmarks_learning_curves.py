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
