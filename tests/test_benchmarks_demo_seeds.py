"""`benchmarks/demo_seeds.py --fusion_learning_rate`: a run that changes stage 2 only starts from the config's run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import demo_seeds  # noqa: E402


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_stage_2_run_copies_what_the_configs_run_trained_before_stage_2_and_nothing_after(
    tmp_path, monkeypatch
):
    own, folder = tmp_path / "float32_seed0", tmp_path / "float32_seed0_fusion_lr_0.001"
    before = ["run_ctr.json", "cf_lightgcn/scores_test.parquet", "text/all_results.json", "text/scores_test.parquet",
              "gate/stage_1_lora/final/adapter_model.safetensors", "gate/stage_1_lora/stage_log.json"]  # fmt: skip
    after = ["all_results.json", "gate/all_results.json", "gate/scores_test.parquet", "gate/adapter/x.safetensors",
             "gate/stage_2_fusion/final/adapter_model.safetensors"]  # fmt: skip
    for name in before + after:
        write(own / name, name)
    ran = []
    monkeypatch.setattr(demo_seeds.subprocess, "run", lambda *a, **k: ran.append(a))
    demo_seeds.start_from(own, folder, ["python", "examples/run_ctr.py"])
    assert ran == []  # the config's run has finished: nothing runs again
    copied = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert copied == sorted(before)
    assert all((folder / name).read_text() == name for name in before)


def test_a_stage_2_run_first_runs_the_configs_run_where_it_has_not_finished(tmp_path, monkeypatch):
    own, folder = tmp_path / "float32_seed1", tmp_path / "float32_seed1_fusion_lr_0.001"

    def run(command, check, env):
        assert command == ["python", "examples/run_ctr.py", "--seed", "1"] and check
        for name in ("all_results.json", "run_ctr.json", "cf_mf/a", "text/b", "gate/stage_1_lora/c"):
            write(own / name)

    monkeypatch.setattr(demo_seeds.subprocess, "run", run)
    demo_seeds.start_from(own, folder, ["python", "examples/run_ctr.py", "--seed", "1"])
    assert (folder / "gate/stage_1_lora/c").is_file() and (folder / "cf_mf/a").is_file()
    assert float((tmp_path / "float32_seed1.wall_seconds").read_text()) >= 0
    write(tmp_path / "empty" / "all_results.json")  # finished, but with nothing to start stage 2 from
    with pytest.raises(FileNotFoundError):
        demo_seeds.start_from(tmp_path / "empty", tmp_path / "x", ["true"])


def test_run_arguments_and_the_validation_cell():
    assert demo_seeds.run_arguments(2, "auto", Path("o")) == ["--seed", "2", "--output_dir", "o",
                                                              "--overwrite_output_dir", "true"]  # fmt: skip
    assert demo_seeds.run_arguments(0, "bfloat16", Path("o"))[-2:] == ["--dtype", "bfloat16"]
    assert demo_seeds.valid_cell({"text": 0.61912, "gate": 0.5249}) == "0.619, 0.525"
    assert demo_seeds.valid_cell(None) == "—"
