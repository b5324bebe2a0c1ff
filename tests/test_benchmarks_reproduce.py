"""`benchmarks/reproduce.py`'s UAUC-selected checkpoints: which checkpoint each finished row's last stage would give,
and whether its test scores are there, from a row folder laid out as `run_ctr.py` and the trainer write it."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402

SELECTION = {"best_auc_step": 400, "best_eval_auc": 0.71, "best_uauc_step": 200, "best_eval_uauc": 0.66}


def finished_row(output_dir: Path, row: str, last: dict, stage_log: dict | None = None) -> Path:
    """A finished LLM row whose last stage record is `last` (its `stage_log.json`: `stage_log`); its stage folder."""
    mode = reproduce.LLM_ROWS[row][0]
    stage = output_dir / row / mode / "stage_2_fusion"
    stage.mkdir(parents=True)
    # the record names the folder the stage trained in, which need not be where the row is now
    record = {"stage": "fusion", "output_dir": f"/elsewhere/{row}/{mode}/stage_2_fusion", **last}
    results = {"by_mode": {mode: {"stages": [{"stage": "lora"}, record]}}}
    (output_dir / row / "all_results.json").write_text(json.dumps(results))
    if stage_log is not None:
        (stage / "stage_log.json").write_text(json.dumps(stage_log))
    return stage


def test_uauc_selection_states(tmp_path):
    args = argparse.Namespace(output_dir=tmp_path)
    trained = {**SELECTION, "rolled_back": False, "best_checkpoint": "checkpoint-400"}
    stage = finished_row(tmp_path, "gate_mf", trained)
    found = reproduce.uauc_selection("gate_mf", args)
    assert found["state"] == "no checkpoint"  # checkpoint-200 is not in the row's stage folder
    (stage / "checkpoint-200").mkdir()
    found = reproduce.uauc_selection("gate_mf", args)
    assert (found["state"], found["best_uauc_step"], found["best_auc_step"]) == ("not scored", 200, 400)
    assert Path(found["checkpoint"]) == stage / "checkpoint-200"

    sidecar = stage.parent / f"{reproduce.UAUC_SCORES}.json"
    sidecar.write_text(
        json.dumps({"checkpoint": "stage_2_fusion/checkpoint-200"})
    )  # relative to the row's folder
    assert reproduce.uauc_selection("gate_mf", args)["state"] == "scored"
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "gate_mf").rename(moved / "gate_mf")
    found = reproduce.uauc_selection("gate_mf", argparse.Namespace(output_dir=moved))
    assert found["state"] == "scored"  # the scores follow their folder
    (moved / "gate_mf").rename(tmp_path / "gate_mf")
    sidecar.write_text(json.dumps({"checkpoint": "stage_2_fusion/checkpoint-600"}))
    assert reproduce.uauc_selection("gate_mf", args)["state"] == "stale"
    (stage / "checkpoint-200").rmdir()  # stale, and the checkpoint to rescore is gone
    assert reproduce.uauc_selection("gate_mf", args)["state"] == "no checkpoint"
    (stage / "checkpoint-200").mkdir()

    for row, last, state in [
        ("gate_lightgcn", {**trained, "best_uauc_step": 400}, "same"),
        ("gate_sasrec", {**trained, "rolled_back": True}, "rolled back"),
        ("inject_mf", {**trained, "best_checkpoint": None}, "last step"),  # evaluated without early stopping
        ("inject_lightgcn", {"rolled_back": False}, "no evaluations"),
    ]:
        finished_row(tmp_path, row, last)
        assert reproduce.uauc_selection(row, args)["state"] == state, row
    assert reproduce.uauc_selection("mf", args) is None  # CF rows have no checkpoints to choose
    assert reproduce.uauc_selection("text", args) is None  # not finished


def test_uauc_selection_reads_resumed_and_shared_stages_from_their_stage_log(tmp_path):
    """A stage loaded on resume, or shared from another row, keeps its evaluations in its folder's stage_log.json."""
    args = argparse.Namespace(output_dir=tmp_path)
    log = {**SELECTION, "rolled_back": False, "best_checkpoint": "checkpoint-400"}
    stage = finished_row(tmp_path, "gate_mf", {"rolled_back": False, "loaded": "final"}, stage_log=log)
    (stage / "checkpoint-200").mkdir()
    assert reproduce.uauc_selection("gate_mf", args)["state"] == "not scored"

    source = tmp_path / "gate_lightgcn" / "gate" / "stage_1_lora"
    (source / "checkpoint-200").mkdir(parents=True)
    (source / "stage_log.json").write_text(json.dumps(log))
    finished_row(tmp_path, "gate_lightgcn_stage1_only", {"shared_from": str(source / "final")})
    found = reproduce.uauc_selection("gate_lightgcn_stage1_only", args)
    assert (found["state"], Path(found["checkpoint"])) == ("not scored", source / "checkpoint-200")


def test_render_uauc_selected_shows_rows_without_evaluations_and_figures():
    found = {
        "rows": {
            "gate_mf": {**SELECTION, "state": "scored", "test": {"auc": 0.72, "auc_ci": [0.70, 0.74], "uauc": 0.68,
                                                                 "uauc_ci": [0.65, 0.71]}},
            "inject_mf": {k: None for k in SELECTION} | {"state": "no evaluations"},
            "text": {**SELECTION, "best_eval_uauc": None, "state": "not scored"},  # evaluations without UAUC
        },
        "paired": {"gate_mf - mf": {"auc_diff": 0.08, "auc_diff_ci": [0.05, 0.11], "auc_p": 0.001,
                                    "uauc_diff": 0.04, "uauc_diff_ci": [0.01, 0.08], "uauc_p": 0.01}},
    }  # fmt: skip
    lines = reproduce.render_uauc_selected(found)
    assert (
        "| gate_mf | 400 (0.7100) | 200 (0.6600) | 0.7200 [0.700, 0.740] | 0.6800 [0.650, 0.710] |" in lines
    )
    assert "| inject_mf (no evaluations) | — | — | — | — |" in lines
    assert "| text (not scored yet (`--uauc_selected`)) | 400 (0.7100) | 200 | — | — |" in lines
    assert "| gate_mf - mf | +0.0800 [+0.050, +0.110] | 0.001 | +0.0400 [+0.010, +0.080] | 0.010 |" in lines
    assert reproduce.render_uauc_selected({"rows": {}}) == []


def test_aligned_refuses_scores_over_other_rows():
    pandas = pytest.importorskip("pandas")
    a = pandas.DataFrame(
        {"user_id": [1, 1, 2], "item_id": [5, 6, 7], "label": [1, 0, 1], "score": [0.1, 0.2, 0.3]}
    )
    assert set(reproduce.aligned({"a": a, "b": a.assign(score=0.5)})) == {"a", "b"}
    with pytest.raises(ValueError, match="b's test scores are not over the same rows"):
        reproduce.aligned({"a": a, "b": a.iloc[::-1]})
    with pytest.raises(ValueError, match="b's test scores"):
        reproduce.aligned({"a": a, "b": a.iloc[:2]})


def test_run_logged_calls_back_while_running_and_records_failed_attempts(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "WHILE_RUNNING_SECONDS", 0.05)
    calls = []
    row = tmp_path / "mf"
    finish = f"import time, pathlib; time.sleep(0.5); pathlib.Path({str(row)!r}).mkdir(); " + (
        f"pathlib.Path({str(row / 'all_results.json')!r}).write_text('{{}}')"
    )
    wall, _ = reproduce.run_logged(row, [sys.executable, "-c", finish], while_running=lambda: calls.append(1))
    assert len(calls) >= 3  # every 0.05 s of the 0.5 s the command ran (archiving finished stages meanwhile)
    assert 0.5 <= wall < 30
    with pytest.raises(subprocess.CalledProcessError):
        reproduce.run_logged(tmp_path / "text", [sys.executable, "-c", "raise SystemExit(3)"])
    attempts = json.loads((tmp_path / "text.timing.json").read_text())["attempts"]
    assert (
        len(attempts) == 1 and "seconds" not in attempts[0]
    )  # interrupted: the next run counts it from its log


def test_a_shared_stage_moved_with_its_output_folder_is_found_where_command_puts_it(tmp_path):
    """`shared_from` records the path the run was given; a restored or moved output folder has it elsewhere."""
    args = argparse.Namespace(output_dir=tmp_path)
    source = tmp_path / "gate_lightgcn" / "gate" / "stage_1_lora"
    source.mkdir(parents=True)
    (source / "stage_log.json").write_text(json.dumps(SELECTION))
    finished_row(
        tmp_path, "gate_lightgcn_stage1_only", {"shared_from": "/gone/gate_lightgcn/gate/stage_1_lora/final"}
    )
    folder, log = reproduce.last_stage_log("gate_lightgcn_stage1_only", args)
    assert (folder, log["best_uauc_step"]) == (source, 200)


def test_a_resume_tabulates_once_per_row_it_runs_not_per_finished_row(tmp_path, monkeypatch):
    """Rows finished in an earlier session are read, not tabulated again one by one (each table redoes the bootstrap);
    the table is written once more at the end only if it lacks rows, also when a row fails."""
    (tmp_path / "mf").mkdir()
    (tmp_path / "mf" / "all_results.json").write_text("{}")
    ran, tables, kept = [], [], []

    def run_row(row, args, while_running=None):
        if not (args.output_dir / row / "all_results.json").is_file():
            if row == "inject_mf":
                raise subprocess.CalledProcessError(1, ["run_ctr.py"])
            ran.append(row)
            (args.output_dir / row).mkdir()
            (args.output_dir / row / "all_results.json").write_text("{}")
        return {"row": row}

    monkeypatch.setattr(reproduce, "run_row", run_row)
    events = []
    monkeypatch.setattr(reproduce, "write_table", lambda results, *rest: (tables.append(list(results)),
                                                                          events.append("table")))  # fmt: skip
    monkeypatch.setattr(reproduce, "keep", lambda action, *rest: (kept.append(action), events.append(action)))
    args = argparse.Namespace(output_dir=tmp_path)
    results = reproduce.run_rows(["mf", "text", "gate_mf"], args, "reproduce_full", None, 0.0)
    assert list(results) == ["mf", "text", "gate_mf"] and ran == ["text", "gate_mf"]
    assert tables == [["mf", "text"], ["mf", "text", "gate_mf"]]  # nothing new at the end: no third table
    assert kept == ["archive", "archive", "archive"]  # after text, after gate_mf, and in `finally`
    tables.clear(), kept.clear()
    reproduce.run_rows(["mf", "text", "gate_mf"], args, "reproduce_full", None, 0.0)
    # all finished: one table, at the end, then the archive (which keeps the scores `--uauc_selected` made there)
    assert tables == [["mf", "text", "gate_mf"]] and kept == ["archive"]
    assert events[-2:] == ["table", "archive"]
    tables.clear()
    with pytest.raises(subprocess.CalledProcessError):  # a resume whose first new row fails
        reproduce.run_rows(["mf", "text", "inject_mf"], args, "reproduce_full", None, 0.0)
    assert tables == [["mf", "text"]]  # the rows read are still tabulated
    tables.clear()
    # a row that ran, then one that failed: no second table
    with pytest.raises(subprocess.CalledProcessError):
        reproduce.run_rows(["mf", "lightgcn", "inject_mf"], args, "reproduce_full", None, 0.0)
    assert tables == [["mf", "lightgcn"]]


def test_a_seed_run_passes_its_seed_and_reads_the_cf_models_of_the_budgets_run(tmp_path):
    """`--seed N` varies the LLM rows only: they get `--seed N` and fuse the CF models trained for the budget's run."""
    base, run = tmp_path / "reproduce_full", tmp_path / "reproduce_full_seed1"
    args = argparse.Namespace(output_dir=run, cf_output_dir=base, seed=1, data_dir="data",
                              config=Path("examples/configs/reproduce_ml1m_full.json"))  # fmt: skip
    gate = reproduce.command("gate_mf", args)
    assert gate[gate.index("--seed") + 1] == "1" and gate[gate.index("--output_dir") + 1] == str(
        run / "gate_mf"
    )
    assert gate[gate.index("--cf_checkpoints") + 1] == str(base / "mf")
    inject = reproduce.command("inject_mf", args)  # its stage 1 is this seed's text row's
    assert inject[inject.index("--shared_stage1") + 1] == str(
        run / "text" / "text" / "stage_1_lora" / "final"
    )
    cf = reproduce.command("mf", args)
    assert "--seed" not in cf and cf[cf.index("--output_dir") + 1] == str(base / "mf")
    assert reproduce.row_folder("mf", args) == base / "mf"
    assert reproduce.row_folder("gate_mf", args) == run / "gate_mf" / "gate"
    budget = argparse.Namespace(output_dir=base, seed=None, data_dir="data", config=args.config)
    assert "--seed" not in reproduce.command("gate_mf", budget)


def test_seed_run_names_the_budgets_run_and_other_seeds_runs(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"seed": 0}')
    for seed in (None, 0):  # the config's own seed is the budget's run: no --seed, no separate folder
        run = reproduce.seed_run("reproduce_full", config, seed)
        assert (run.results_name, run.output_dir, run.seed) == (
            "reproduce_full",
            Path("outputs/reproduce_full"),
            None,
        )
    run = reproduce.seed_run("reproduce_full", config, 3)
    assert (run.results_name, run.output_dir, run.seed) == (
        "reproduce_full_seed3",
        Path("outputs/reproduce_full_seed3"),
        3,
    )
    assert run.cf_output_dir == Path("outputs/reproduce_full")
    assert reproduce.seed_run("reproduce_full", config, 3, tmp_path / "cf").cf_output_dir == tmp_path / "cf"
    config.write_text("{}")  # no seed in the config: TrainingArguments' 42
    assert reproduce.seed_run("reproduce_full", config, 42).seed is None
    assert reproduce.seed_run("reproduce_full", config, 0).results_name == "reproduce_full_seed0"


def test_a_seed_run_trains_no_cf_model(tmp_path, monkeypatch):
    """A CF model missing from the budget's folder is an error in a --seed run, not a second training into it."""
    ran = []
    monkeypatch.setattr(reproduce, "run_logged", lambda folder, cmd, while_running=None: ran.append(folder))
    args = argparse.Namespace(
        output_dir=tmp_path / "seed1", cf_output_dir=tmp_path / "budget", seed=1, data_dir="d"
    )
    with pytest.raises(FileNotFoundError, match=r"budget/mf holds no finished mf model: a --seed run"):
        reproduce.run_row("mf", args)
    assert ran == []
    (tmp_path / "budget" / "mf").mkdir(parents=True)
    (tmp_path / "budget" / "mf" / "all_results.json").write_text('{"test_auc": 0.64}')
    monkeypatch.setattr(
        reproduce, "run_logged", lambda folder, cmd, while_running=None: ran.append(folder) or (None, [])
    )
    assert reproduce.run_row("mf", args)["test_auc"] == 0.64 and ran == [tmp_path / "budget" / "mf"]


def test_ablations_are_paired_with_the_gate_and_inject_rows_of_their_cf_source():
    rows = ["lightgcn", "text", "gate_lightgcn", "inject_lightgcn", "token_gate_lightgcn", "add_lightgcn"]
    rows.append("gate_mf")
    base, pairs = reproduce.comparisons(rows)
    assert base["token_gate_lightgcn"] == "lightgcn" and "gate_mf" not in base  # mf's CF row is absent
    for ablation in ("token_gate_lightgcn", "add_lightgcn"):
        assert (ablation, "gate_lightgcn") in pairs and (ablation, "inject_lightgcn") in pairs
    assert ("gate_lightgcn", "inject_lightgcn") in pairs and ("gate_lightgcn", "gate_lightgcn") not in pairs
    # an ablation whose reference rows have not run is paired with nothing (its CF model is its RelaImpr base only)
    base, alone = reproduce.comparisons(["lightgcn", "token_gate_lightgcn"])
    assert alone == [] and base == {"token_gate_lightgcn": "lightgcn"}


def test_gate_init_alpha_runs_a_copy_of_the_config_that_changes_alpha_only(tmp_path):
    budget = reproduce.BUDGETS["full"][0]
    path = reproduce.config_with(budget, tmp_path, gate_init_alpha=1.0)
    assert path == tmp_path / "config.json"
    before, after = json.loads(budget.read_text()), json.loads(path.read_text())
    assert before["gate_init_alpha"] == 0.0 and after == {**before, "gate_init_alpha": 1.0}
    args = argparse.Namespace(
        config=path, data_dir="d", output_dir=tmp_path / "out", seed=None, cf_output_dir=None
    )
    assert reproduce.command("gate_mf", args)[2] == str(path)  # what the rows run
    assert reproduce.shared_stage1_source("add_lightgcn", args) == "gate_lightgcn"  # α = 1 is the add fusion
