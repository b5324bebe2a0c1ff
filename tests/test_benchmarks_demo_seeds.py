"""`benchmarks/demo_seeds.py`'s variants: a run that changes `gate` starts from the config's run of its seed."""

import json
import sys
from pathlib import Path

import pytest
import scipy.stats

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
    fresh = tmp_path / "float32_seed0_gate_alpha_1"  # α's start reaches stage 1: gate trains from scratch
    demo_seeds.start_from(own, fresh, ["python", "examples/run_ctr.py"], keeps_stage1=False)
    copied = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
    assert copied == sorted(name for name in before if not name.startswith("gate/"))


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


def test_render_gives_every_row_of_the_runs_table_its_header_cells():
    model = {"auc": 0.6, "auc_ci": [0.55, 0.65]}
    pair = {"auc_diff": 0.02, "auc_diff_ci": [-0.01, 0.05]}
    subset = {"rows": 600, "models": {"cf": model, "text": model, "gate": model},
              "pairs": {"gate - text": pair, "gate - cf": pair}}  # fmt: skip
    runs = {f"float32_seed{seed}": {"dtype": "float32", "seed": seed, "wall_seconds": 600.0,
                                    "test": {name: subset for name in demo_seeds.SUBSETS}} for seed in (0, 1)}  # fmt: skip
    runs["float32_seed1"]["valid_auc"] = {"text": 0.61, "gate": 0.63}
    entry = {"run_ctr_command": "python examples/run_ctr.py demo.json", "train_rows": 1000, "figure": "f.png",
             "runs": runs, "summary": demo_seeds.summarize(runs)}  # fmt: skip
    lines = demo_seeds.render(entry)
    start = next(i for i, line in enumerate(lines) if line.startswith("| dtype"))
    table = lines[start : start + 4]
    assert {line.count("|") for line in table} == {13}  # 12 cells: header, rule and both runs
    assert table[2].endswith("| — | 10.0 |") and table[3].endswith("| 0.610, 0.630 | 10.0 |")
    start = next(i for i, line in enumerate(lines) if line.startswith("| rows: comparison"))
    summary = lines[start : start + 2 + len(entry["summary"])]
    assert {line.count("|") for line in summary} == {9}  # 8 cells
    # both seeds +0.02: no spread between them, the mean is exact
    assert summary[2].endswith("| 0 | 0 | 2 | float32 [+0.020, +0.020], p 0.00 |")
    del entry[
        "summary"
    ]  # entries recorded before the spread between seeds was kept: it comes from their runs
    assert demo_seeds.render(entry) == lines


def test_the_spread_between_seeds_is_taken_per_dtype_over_its_runs():
    def run(dtype, diff):
        pair = {"auc_diff": diff, "auc_diff_ci": [diff - 0.05, diff + 0.05]}
        return {"dtype": dtype, "test": {name: {"pairs": {"gate - text": pair, "gate - cf": pair}}
                                         for name in demo_seeds.SUBSETS}}  # fmt: skip

    runs = {"b0": run("bfloat16", 0.05), "b1": run("bfloat16", -0.002), "b2": run("bfloat16", 0.035),
            "f0": run("float32", 0.06)}  # fmt: skip
    found = demo_seeds.summarize(runs)["warm: gate - cf"]
    assert found["runs"] == 4 and found["mean"] == pytest.approx((0.05 - 0.002 + 0.035 + 0.06) / 4)
    # float32 has one run: no spread to take; bfloat16's three seeds give a t-interval around their own mean
    assert list(found["between_seeds"]) == ["bfloat16"]
    low, high = found["between_seeds"]["bfloat16"]["ci"]
    assert (low + high) / 2 == pytest.approx((0.05 - 0.002 + 0.035) / 3) and low < 0 < high
    assert demo_seeds.seeds_cell(found).startswith(f"bfloat16 [{low:+.3f}, {high:+.3f}], p 0.")
    assert found["between_dtypes"] == {}  # no second dtype with two runs
    runs["f1"] = run("float32", 0.08)
    found = demo_seeds.summarize(runs)["warm: gate - cf"]
    # bfloat16 - float32 in name order: Welch over the 3 and 2 seeds
    between = found["between_dtypes"]["bfloat16 - float32"]
    assert between["mean"] == pytest.approx((0.05 - 0.002 + 0.035) / 3 - 0.07)
    expected = scipy.stats.ttest_ind([0.05, -0.002, 0.035], [0.06, 0.08], equal_var=False)
    assert between["ci"] == pytest.approx(list(expected.confidence_interval(0.95)))
    assert between["p"] == pytest.approx(expected.pvalue)
    assert demo_seeds.seeds_cell(found).endswith(
        f"; bfloat16 - float32: {between['mean']:+.3f} [{between['ci'][0]:+.3f}, {between['ci'][1]:+.3f}], "
        f"p {between['p']:.2f}"
    )


def test_variants_resume_the_gate_run_and_keep_stage_1_unless_they_change_it():
    assert demo_seeds.variant(None, False) is None  # the config itself
    rate = demo_seeds.variant(1e-3, False)
    assert rate["name"] == "fusion_lr_0.001" and rate["arguments"][:2] == ["--fusion_learning_rate", "0.001"]
    alone = demo_seeds.variant(None, True)
    assert alone["name"] == "stage1_only" and alone["arguments"][:2] == ["--schedule", "lora"]
    alpha = demo_seeds.variant(None, False, 1.0)
    assert alpha["name"] == "gate_alpha_1" and alpha["arguments"][:2] == ["--gate_init_alpha", "1"]
    for found in (rate, alone, alpha):
        assert found["arguments"][2:] == ["--fusion_modes", "gate", "--resume_from_checkpoint", "true"]
    assert rate["keeps_stage1"] and alone["keeps_stage1"] and not alpha["keeps_stage1"]
    both = demo_seeds.variant(1e-3, False, 1.0)  # α's start and stage 2's rate combine
    assert both["name"] == "gate_alpha_1_fusion_lr_0.001" and not both["keeps_stage1"]
    assert both["arguments"] == ["--gate_init_alpha", "1", "--fusion_learning_rate", "0.001", "--fusion_modes",
                                 "gate", "--resume_from_checkpoint", "true"]  # fmt: skip
    assert both["title"].endswith("; stage 2 at fusion learning rate 0.001")
    with pytest.raises(ValueError, match="stage1_only"):
        demo_seeds.variant(None, True, 1.0)


def test_a_variants_table_says_what_its_runs_copied_and_trained():
    rate = demo_seeds.variant_text(demo_seeds.variant(1e-3, False))
    assert "and `gate` stage 1, bitwise what this setting trains" in rate
    assert rate.endswith(
        "wall min counts what ran after stage 1 (stage 2, scoring)."
    )  # as committed tables say
    alpha = demo_seeds.variant_text(demo_seeds.variant(None, False, 1.0))
    assert (
        "its CF model and `text` run; `gate` trains both stages" in alpha and "stage 1, bitwise" not in alpha
    )
    assert alpha.endswith("wall min counts what ran after them (both `gate` stages, scoring).")
    assert "`--gate_init_alpha 1 --fusion_modes gate --resume_from_checkpoint true`" in alpha


def test_a_finished_run_of_another_config_is_refused_and_names_what_changed(tmp_path):
    config = {"train_rows_per_stage": 1000, "gate_init_alpha": 1.0, "table_note": "now"}
    write(
        tmp_path / "same" / "run_ctr.json",
        json.dumps({"argv": [], "config": {**config, "table_note": "then"}}),
    )
    # the note it prints is not a setting
    demo_seeds.check_same_config(tmp_path / "same", "demo.json", config)
    write(
        tmp_path / "old" / "run_ctr.json",
        json.dumps({"argv": [], "config": {**config, "gate_init_alpha": None}}),
    )
    with pytest.raises(SystemExit, match=r"old holds a run of this script, but `demo.json` has changed since this run "
                                         r"\(`gate_init_alpha` null → 1.0\)"):  # fmt: skip
        demo_seeds.check_same_config(tmp_path / "old", "demo.json", config)
    # written before run_ctr.py kept the config
    write(tmp_path / "older" / "run_ctr.json", json.dumps({"argv": ["demo.json"]}))
    with pytest.raises(SystemExit, match="does not keep the config it ran"):
        demo_seeds.check_same_config(tmp_path / "older", "demo.json", config)
    write(tmp_path / "copied" / "all_results.json")  # finished, without its record
    with pytest.raises(SystemExit, match="or missing"):
        demo_seeds.check_same_config(tmp_path / "copied", "demo.json", config)
    demo_seeds.check_same_config(tmp_path / "fresh", "demo.json", config)  # nothing there yet


def test_main_refuses_another_configs_run_before_training_anything(tmp_path, monkeypatch):
    config = tmp_path / "demo.json"
    config.write_text(json.dumps({"train_rows_per_stage": 1000, "gate_init_alpha": 1.0}))
    write(
        tmp_path / "out" / "float32_seed1" / "run_ctr.json",
        json.dumps({"argv": [], "config": {"train_rows_per_stage": 1000}}),
    )
    ran = []
    monkeypatch.setattr(demo_seeds.subprocess, "run", lambda *a, **k: ran.append(a))
    argv = ["demo_seeds.py", str(config), "--seeds", "0", "1", "--dtypes", "float32",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(
        SystemExit, match=r"float32_seed1 holds a run of this script, but .*`gate_init_alpha` null → 1.0"
    ):
        demo_seeds.main()
    assert ran == []  # seed 0 did not train first


def test_a_variant_the_config_already_sets_is_the_configs_own_run_and_others_still_train_gate(
    tmp_path, monkeypatch
):
    settings = {"train_rows_per_stage": 1000, "gate_init_alpha": 1.0, "fusion_learning_rate": 0.001}
    config, out = tmp_path / "demo.json", tmp_path / "out"
    config.write_text(json.dumps(settings))
    ran, saved = [], {}

    def run(command, check, env):  # a run_ctr.py run: what demo_seeds.py reads back
        ran.append(command)
        folder = Path(command[command.index("--output_dir") + 1])
        write(folder / "run_ctr.json", json.dumps({"argv": [], "config": settings}))
        for name in ("all_results.json", "cf_lightgcn/x", "text/all_results.json", "gate/all_results.json",
                     "gate/stage_1_lora/x"):  # fmt: skip
            write(folder / name, json.dumps({"eval_auc": 0.6}))

    pair = {"auc_diff": 0.02, "auc_diff_ci": [0.01, 0.03]}
    subset = {"pairs": {"gate - text": pair, "gate - cf": pair}}
    monkeypatch.setattr(demo_seeds.subprocess, "run", run)
    comparison = {name: subset for name in demo_seeds.SUBSETS}
    monkeypatch.setattr(demo_seeds, "test_comparison", lambda *a: comparison)
    monkeypatch.setattr(demo_seeds, "plot", lambda *a: None)
    monkeypatch.setattr(demo_seeds, "save_results", lambda name, entry, *a: saved.update({name: entry}) or [])
    base = ["demo_seeds.py", str(config), "--seeds", "0", "--dtypes", "float32", "--output_dir", str(out)]
    monkeypatch.setattr(sys, "argv", [*base, "--gate_init_alpha", "1", "--fusion_learning_rate", "0.001"])
    demo_seeds.main()
    assert len(ran) == 1 and ran[0][3:] == ["--seed", "0", "--output_dir", str(out / "float32_seed0"),
                                            "--overwrite_output_dir", "true", "--dtype", "float32"]  # fmt: skip
    entry = saved["demo_seeds_gate_alpha_1_fusion_lr_0.001"]
    assert entry["variant"]["is_the_config"] and entry["variant"]["arguments"] == []
    assert "--gate_init_alpha" not in entry["runs"]["float32_seed0"]["command"]
    assert "each run is the config's run of its seed" in demo_seeds.variant_text(entry["variant"])
    assert sorted(p.name for p in out.iterdir()) == ["float32_seed0", "float32_seed0.wall_seconds"]
    # a rate the config does not set: gate trains again from the config's run
    monkeypatch.setattr(sys, "argv", [*base, "--fusion_learning_rate", "0.01"])
    demo_seeds.main()
    assert len(ran) == 2 and str(out / "float32_seed0_fusion_lr_0.01") in ran[1]
    assert ran[1][-6:] == ["--fusion_learning_rate", "0.01", "--fusion_modes", "gate", "--resume_from_checkpoint",
                           "true"]  # fmt: skip
    assert not saved["demo_seeds_fusion_lr_0.01"]["variant"].get("is_the_config")
    # a leftover variant folder of an older config is not read, so it does not stop the config's runs being used
    write(out / "float32_seed0_gate_alpha_1" / "run_ctr.json", json.dumps({"argv": [], "config": {"x": 1}}))
    monkeypatch.setattr(sys, "argv", [*base, "--gate_init_alpha", "1"])
    demo_seeds.main()
    assert len(ran) == 2 and saved["demo_seeds_gate_alpha_1"]["variant"]["is_the_config"]
    # the config's runs of an older config are refused, also when only tabulated
    write(
        out / "float32_seed0" / "run_ctr.json",
        json.dumps({"argv": [], "config": {**settings, "gate_init_alpha": 0}}),
    )
    monkeypatch.setattr(sys, "argv", [*base, "--gate_init_alpha", "1", "--report_only"])
    with pytest.raises(
        SystemExit, match=r"float32_seed0 holds a run of this script, but .*`gate_init_alpha` 0 → 1.0"
    ):
        demo_seeds.main()


def test_which_variants_are_the_config():
    config = {"gate_init_alpha": 1, "fusion_learning_rate": 0.001, "schedule": "lora"}
    assert demo_seeds.is_the_config(
        demo_seeds.variant(0.0010000001, False, 1.0), config
    )  # as run_ctr.py gets them
    assert not demo_seeds.is_the_config(demo_seeds.variant(0.01, False, 1.0), config)
    assert not demo_seeds.is_the_config(demo_seeds.variant(None, True), config)  # stage 1 alone never is
    # a value the config leaves to run_ctr.py's default is not the config's
    assert not demo_seeds.is_the_config(demo_seeds.variant(None, False, 0.0), {})
