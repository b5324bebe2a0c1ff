"""`benchmarks/archive.py`: what of a run's output folder is kept in git, and how a fresh output folder is rebuilt
from it (finished rows and stages only; scores without their ids)."""

import functools
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import archive  # noqa: E402
import reproduce  # noqa: E402

SPLITS = {
    "validation": pd.DataFrame({"user_id": [1, 1, 2, 3], "item_id": [5, 6, 5, 7], "label": [1, 0, 0, 1]}),
    "test": pd.DataFrame({"user_id": [2, 3, 3], "item_id": [6, 5, 8], "label": [0, 1, 1]}),
}


LORA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
FUSION = "base_model.model.model.gate.cf_gates.0.fc1.modules_to_save.default.weight"
ADAPTER = save({LORA: torch.ones(2, 3), FUSION: torch.full((3, 3), 0.5)}, {"format": "pt"})


def write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def scores(split: str, values) -> pd.DataFrame:
    return SPLITS[split].assign(score=values)


def run_folder(out: Path) -> None:
    """A reproduction's output folder: `mf` (CF) and `text` finished, `gate_mf` with stage 1 done, stage 2 mid-way."""
    write(out / "mf" / "all_results.json", '{"test_auc": 0.64}')  # CF rows train again in minutes: not kept
    write(out / "mf" / "model.safetensors", b"mf-weights")
    write(out / "mf.timing.json", json.dumps({"attempts": [{"started": 1.0, "seconds": 90.0}]}))

    mode = out / "gate_mf" / "gate"
    write(out / "gate_mf" / "run_ctr.json", '{"argv": []}')
    write(mode / "model.safetensors", b"the LLM with CF tables: not kept")
    write(mode / "stage_1_lora" / "final" / "adapter_model.safetensors", ADAPTER)
    write(mode / "stage_1_lora" / "final" / "adapter_config.json", '{"r": 8}')
    write(mode / "stage_1_lora" / "final" / "README.md", "PEFT's card: not kept")
    write(mode / "stage_1_lora" / "stage_log.json", '{"stage": "lora", "best_auc_step": 200}')
    write(mode / "stage_1_lora" / "checkpoint-200" / "adapter_model.safetensors", b"not kept")
    write(mode / "stage_2_fusion" / "checkpoint-200" / "adapter_model.safetensors", b"not kept")
    write(
        mode / "stage_2_fusion" / "final" / "adapter_model.safetensors", ADAPTER
    )  # the last stage's: not kept
    started = 1000.0
    write(out / "gate_mf.timing.json", json.dumps({"attempts": [{"started": started, "commit": "abc"}]}))
    log = write(out / "gate_mf.log", "running: not kept")
    os.utime(log, (started + 250.0, started + 250.0))  # its last write: 250 s into the attempt still running

    text = out / "text" / "text"  # finished, scored at its UAUC-selected checkpoint too
    write(
        out / "text.timing.json",
        json.dumps({"attempts": [{"started": 1.0, "seconds": 90.0, "commit": "abc"}]}),
    )
    write(out / "text" / "all_results.json", '{"by_mode": {}}')
    write(text / "all_results.json", '{"test_auc": 0.68}')
    write(text / "README.md", "model card: not kept")
    scores("validation", [0.1, 0.2, 0.3, 0.4]).to_parquet(text / "scores_validation.parquet")
    scores("test", [0.5, 0.25, 0.125]).to_parquet(text / "scores_test.parquet")
    scores("test", [0.3, 0.1, 0.2]).to_parquet(text / "scores_test_uauc_selected.parquet")
    write(text / "scores_test_uauc_selected.parquet.json", '{"checkpoint": "stage_1_lora/checkpoint-400"}')
    write(out / "select" / "stage1_learning_rate_0.001" / "all_results.json", "{}")  # not a row: not kept


JSON_FILES = {
    "gate_mf.timing.json", "gate_mf/run_ctr.json", "gate_mf/gate/stage_1_lora/final/adapter_config.json",
    "gate_mf/gate/stage_1_lora/stage_log.json", "text.timing.json", "text/all_results.json",
    "text/text/all_results.json", "text/text/scores_test_uauc_selected.parquet.json",
}  # fmt: skip
BINARY_FILES = {
    "gate_mf/gate/stage_1_lora/final/adapter_model.safetensors", "text/text/scores_validation.parquet",
    "text/text/scores_test.parquet", "text/text/scores_test_uauc_selected.parquet",
}  # fmt: skip
ROWS = ("gate_mf", "text")  # the LLM rows
PROVENANCE = {"cpu_capability": "AVX512", "cpu_kind": "AMX"}


def test_archive_keeps_finished_work_only_with_its_provenance_and_scores_without_ids(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    run_folder(out)
    written = archive.archive(out, kept, SPLITS, PROVENANCE, rows=ROWS)
    assert {p.as_posix() for p in written} == JSON_FILES | BINARY_FILES
    on_disk = {p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()}
    assert on_disk == BINARY_FILES | {"gate_mf.json", "text.json"}  # a row's JSON files: one record
    record = json.loads((kept / "text.json").read_text())
    assert record["provenance"] == PROVENANCE
    assert record["files"]["text/text/all_results.json"] == {"test_auc": 0.68}
    stored = pd.read_parquet(kept / "text" / "text" / "scores_test.parquet")
    assert list(stored.columns) == ["score"] and stored["score"].tolist() == [0.5, 0.25, 0.125]
    gate = json.loads((kept / "gate_mf.json").read_text())["files"]
    running = gate["gate_mf.timing.json"]["attempts"][-1]
    assert (running["seconds"], running["until_archived"]) == (250.0, True)
    assert (
        archive.archive(out, kept, SPLITS, PROVENANCE, rows=ROWS) == []
    )  # nothing changed, nothing rewritten

    # a LoRA stage's final adapter: its LoRA weights only (the fusion weights are still their seeded initialization)
    lora_stage = load((kept / "gate_mf/gate/stage_1_lora/final/adapter_model.safetensors").read_bytes())
    assert list(lora_stage) == [LORA] and lora_stage[LORA].tolist() == [[1.0] * 3] * 2

    stage_2 = out / "gate_mf" / "gate" / "stage_2_fusion"
    write(stage_2 / "stage_log.json", '{"stage": "fusion"}')  # written after final/: stage 2 has ended
    # the last stage's adapter is not kept: its row is scored right after it (the scores are what is kept)
    assert [p.as_posix() for p in archive.archive(out, kept, SPLITS, PROVENANCE, rows=ROWS)] == [
        "gate_mf/gate/stage_2_fusion/stage_log.json"
    ]
    assert (
        json.loads((kept / "gate_mf.json").read_text())["files"]["gate_mf.timing.json"]
        == gate["gate_mf.timing.json"]
    )


def test_restore_rebuilds_a_fresh_output_folder_and_keeps_what_is_there(tmp_path):
    out, kept, fresh = tmp_path / "out", tmp_path / "kept", tmp_path / "fresh"
    run_folder(out)
    archive.archive(out, kept, SPLITS, PROVENANCE, rows=ROWS)
    write(
        fresh / "text" / "all_results.json", '{"by_mode": {"text": {}}}'
    )  # this machine's own: not replaced
    restored = {p.as_posix() for p in archive.restore(kept, fresh, SPLITS)}
    assert restored == (JSON_FILES | BINARY_FILES) - {"text/all_results.json"}
    assert (fresh / "text" / "all_results.json").read_text() == '{"by_mode": {"text": {}}}'
    assert json.loads((fresh / "gate_mf/gate/stage_1_lora/stage_log.json").read_text()) == {
        "stage": "lora", "best_auc_step": 200,
    }  # fmt: skip
    for name in ("scores_validation", "scores_test", "scores_test_uauc_selected"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(fresh / "text" / "text" / f"{name}.parquet"),
            pd.read_parquet(out / "text" / "text" / f"{name}.parquet"),
        )
    lora = load((fresh / "gate_mf/gate/stage_1_lora/final/adapter_model.safetensors").read_bytes())
    assert list(lora) == [LORA]
    assert not (fresh / "gate_mf" / "gate" / "stage_2_fusion").exists()  # stage 2 restarts from its beginning
    assert not (fresh / "mf").exists()  # the CF row trains again
    # the restored rows are finished for reproduce.py: skipped, their time the archived attempts'
    write(fresh / "text" / "all_results.json", '{"by_mode": {}}')
    assert reproduce.run_logged(fresh / "text", ["false"]) == (90.0, ["abc"])
    assert archive.restore(kept, fresh, SPLITS) == []
    assert archive.restore(tmp_path / "nothing kept yet", fresh, SPLITS) == []


def test_stage1_from_takes_lora_only_rows_whole_and_the_lora_stage_of_the_others(tmp_path):
    """`reproduce.py --stage1_from`: a new run restores from another run's archive `text` (a LoRA-only row) whole and
    `gate_mf`'s stage 1, but none of `gate_mf`'s stage 2, results, scores or time, and nothing of `inject_mf` (its
    stage 1 is `text`'s): those train again."""
    out, kept, fresh = tmp_path / "out", tmp_path / "kept", tmp_path / "fresh"
    run_folder(out)
    mode = out / "gate_mf" / "gate"
    write(mode / "stage_2_fusion" / "stage_log.json", '{"stage": "fusion"}')
    write(mode / "all_results.json", '{"test_auc": 0.73}')
    write(out / "gate_mf" / "all_results.json", '{"by_mode": {}}')
    scores("test", [0.9, 0.8, 0.7]).to_parquet(mode / "scores_test.parquet")
    inject = out / "inject_mf" / "inject"
    write(inject / "stage_2_fusion" / "stage_log.json", '{"stage": "fusion", "shared_from": "text"}')
    write(inject / "all_results.json", '{"test_auc": 0.72}')
    write(out / "inject_mf.timing.json", json.dumps({"attempts": [{"started": 1.0, "seconds": 9.0}]}))
    archive.archive(out, kept, SPLITS, PROVENANCE, rows=(*ROWS, "inject_mf"))
    assert (kept / "gate_mf" / "gate" / "scores_test.parquet").is_file() and (
        kept / "inject_mf.json"
    ).is_file()
    restored = {p.as_posix() for p in archive.restore(kept, fresh, SPLITS, wanted=reproduce.first_stages)}
    text = {p for p in JSON_FILES | BINARY_FILES if p.startswith("text")}
    stage_1 = {p for p in JSON_FILES | BINARY_FILES if p.startswith("gate_mf/gate/stage_1_lora/")}
    assert len(text) == 7 and len(stage_1) == 3 and restored == text | stage_1
    assert (
        load((fresh / "gate_mf/gate/stage_1_lora/final/adapter_model.safetensors").read_bytes())[LORA].sum()
        == 6
    )
    # with --gate_init_alpha other than the config's, α's start reaches gate_mf's stage 1: only text comes back
    other = tmp_path / "alpha1"
    wanted = functools.partial(reproduce.first_stages, alpha_changed=True)
    assert {p.as_posix() for p in archive.restore(kept, other, SPLITS, wanted=wanted)} == text
    # the rest comes back with a plain restore, which a --stage1_from run never does from the other run's archive
    assert "gate_mf/gate/scores_test.parquet" in {p.as_posix() for p in archive.restore(kept, fresh, SPLITS)}


def test_scores_over_other_rows_are_not_kept(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    folder = out / "text" / "text"
    scores("test", [0.5, 0.25, 0.125]).iloc[::-1].to_parquet(write(folder / "scores_test.parquet"))
    with pytest.warns(
        UserWarning, match=r"text/text/scores_test.parquet: not kept, its rows are not the test"
    ):
        assert archive.archive(out, kept, SPLITS, PROVENANCE, rows=ROWS) == []
    pd.DataFrame({"score": [0.5, 0.25]}).to_parquet(write(kept / "text" / "text" / "scores_test.parquet"))
    with pytest.raises(ValueError, match="has 2 scores, the test split 3 rows"):
        archive.restore(kept, tmp_path / "fresh", SPLITS)
    with pytest.raises(ValueError, match="scores_validation"):
        archive.split_of(Path("scores_train.parquet"))


def test_a_run_resumed_from_a_kept_lora_stage_matches_the_uninterrupted_run(tmp_path):
    """The kept stage-1 adapter (LoRA only) + the fusion weights' seeded initialization = the stage-1 model: a run
    resumed from it on a fresh machine trains stage 2 to the same weights as the run that never stopped."""
    from ccf_llm import CCFDataCollator
    from ccf_llm.trainer_ccf_llama import CCFTwoStageTrainer
    from tests.test_trainer_ccf_llama import tiny_setup, two_stage_args

    model, tokenizer, data = tiny_setup("gate")
    collator = CCFDataCollator(tokenizer.pad_token_id)
    uninterrupted = CCFTwoStageTrainer(
        model, two_stage_args(tmp_path), train_dataset=data, data_collator=collator
    )
    uninterrupted.train()
    stage_1 = tmp_path / "run" / "stage_1_lora"
    (stage_1 / "stage_log.json").write_text('{"stage": "lora"}')  # written by a run with early stopping
    kept = load(archive._adapter(stage_1 / "final" / "adapter_model.safetensors"))
    assert kept and all("lora_" in key for key in kept)

    resumed_final = tmp_path / "resumed" / "stage_1_lora" / "final"  # what restore puts on the fresh machine
    write(resumed_final / "adapter_model.safetensors", save(kept, {"format": "pt"}))
    write(resumed_final / "adapter_config.json", (stage_1 / "final" / "adapter_config.json").read_bytes())
    model, _, data = tiny_setup("gate")  # the fresh run: the same seed, so the same ALG/GATE initialization
    resumed = CCFTwoStageTrainer(model, two_stage_args(tmp_path, output_dir=str(tmp_path / "resumed")),
                                 train_dataset=data, data_collator=collator)  # fmt: skip
    log = resumed.train(resume_from_checkpoint=True)
    assert "loaded" in log[0] and log[1]["steps"] == 6
    expected = dict(uninterrupted.model.named_parameters())
    fusion = [name for name, _ in resumed.model.named_parameters() if ".modules_to_save." in name]
    assert fusion and all(torch.equal(p, expected[n]) for n, p in resumed.model.named_parameters())
