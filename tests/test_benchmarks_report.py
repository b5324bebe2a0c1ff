"""`benchmarks/report.py`: benchmark runs measure, and are filed under, the checkout that started them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report  # noqa: E402

import ccf_llm  # noqa: E402


def package_imported_by_a_child(env: dict | None, cwd: Path) -> str:
    """The folder of the `ccf_llm` that a child Python process with `env` imports."""
    code = "import ccf_llm, pathlib; print(pathlib.Path(ccf_llm.__file__).resolve().parent)"
    child = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return child.stdout.strip()


def test_child_processes_import_the_package_of_the_checkout_that_started_them(tmp_path, monkeypatch):
    other = tmp_path / "other_checkout"  # e.g. the checkout an editable install points at
    (other / "ccf_llm").mkdir(parents=True)
    (other / "ccf_llm" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(other))
    # what a plain child of a run in a worktree imports:
    assert package_imported_by_a_child(None, tmp_path) == str(other / "ccf_llm")
    env = report.checkout_env(OMP_NUM_THREADS="1")
    assert package_imported_by_a_child(env, tmp_path) == str(report.ROOT / "ccf_llm")
    assert (
        env["PYTHONPATH"].split(os.pathsep) == [str(report.ROOT), str(other)]
        and env["OMP_NUM_THREADS"] == "1"
    )


def test_results_refuse_to_be_filed_under_a_checkout_whose_package_did_not_run(tmp_path, monkeypatch):
    report.check_checkout()  # the tests import this checkout's package
    monkeypatch.setattr(ccf_llm, "__file__", str(tmp_path / "main" / "ccf_llm" / "__init__.py"))
    elsewhere = tmp_path / "main" / "ccf_llm"
    with pytest.raises(RuntimeError, match=f"imported ccf_llm from {elsewhere} .*run them with PYTHONPATH="):
        report.provenance("float32")
