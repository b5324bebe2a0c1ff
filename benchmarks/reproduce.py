"""Reproduce the paper's Table 3, Table 4 and Fig. 3 on ML-1M (CoLLM's split) at one fixed CPU budget, resumably.

    python benchmarks/reproduce.py [--data_dir ../shared/data/ml-1m] [--output_dir outputs/reproduce]
                                   [--config examples/configs/reproduce_ml1m.json] [--only ROW ...]
    python benchmarks/reproduce.py --select [--select_eval_rows 5000]   # choose the learning rates first
    python benchmarks/reproduce.py --budget full --seed 1 --only gate_mf inject_mf   # another seed of LLM rows
    python benchmarks/reproduce.py --budget full --results_name reproduce_full_v2 --stage1_from reproduce_full
                                   --cf_output_dir outputs/reproduce_full   # stage 2 again from the same stage 1
    python benchmarks/reproduce.py --budget full --gate_init_alpha 1 --stage1_from reproduce_full
                                   --cf_output_dir outputs/reproduce_full --only text inject_mf gate_mf   # α from 1

Rows (each one process of `examples/pretrain_cf.py` or `examples/run_ctr.py`, output in `OUTPUT_DIR/<row>`):

* CF: `mf`, `lightgcn`, `sasrec` (CoLLM's settings; SASRec capped at 50 epochs with patience 10 to fit the
  budget, see `CF_ARGS`);
* LLM without CF: `text` (TALLRec-style prompt, stage 1 only: it has no fusion weights);
* CoLLM-style `inject_{mf,lightgcn,sasrec}` and CCF-LLM `gate_{mf,lightgcn,sasrec}` (two stages);
* ablations, on LightGCN as in the paper: `token_gate_lightgcn` (α ∈ R), `add_lightgcn` (α = 1),
  `gate_lightgcn+mf` (two CF sources, Eq. 7), `gate_lightgcn_stage1_only`, `gate_lightgcn_end_to_end` (Table 4).

Every LLM row uses SmolLM2-135M-Instruct and the same budget (`--config`): the same seeded `train_rows_per_stage`
training rows per stage, the learning rates that `python benchmarks/reproduce.py --select` chose on validation rows
(`benchmarks/results/reproduce_selection.md`; the test set is not read there), and the full validation and test
sets, each read once at the end. A row is finished when `OUTPUT_DIR/<row>/all_results.json`
exists: a rerun skips finished rows and resumes an unfinished one after its last finished stage (to rerun a
finished row, move its folder away, in `OUTPUT_DIR` and in the archive below; `--results_name` tabulates such a
folder on its own). A row's time is
the sum of its attempts (`OUTPUT_DIR/<row>.timing.json`); an interrupted attempt counts until its log's last write.
Each attempt keeps the git commit it ran at, and the table says which rows ran at which code.

`OUTPUT_DIR` is lost with its machine: every minute while a row runs and after it, the part of an LLM row later
runs read (results, stage logs, LoRA stages' adapters, scores without ids, with the machine's provenance) is kept in
`benchmarks/results/<name>_rows/<CPU kind>/` (`archive.py`; commit it), and every run first restores from there what
`OUTPUT_DIR` lacks, so a fresh clone on a machine of the same kind skips the finished rows and resumes an unfinished
one after its last finished stage. Checkpoints are not kept: a restored row whose UAUC-selected checkpoint was not
scored cannot be scored there (`no checkpoint`).

`--stage1_from NAME` starts a new run (`--results_name`) from the stage 1 of run NAME of the same seed, kept in its
archive: rows that train LoRA only are taken whole, the others load their LoRA stage and train the later stages
again (`first_stages`). Stage 1 trains no fusion weight and is about half of a `gate` row's time (AMX: 43-62 min of
83-99), and the `text` row that the inject rows share takes 56 min: this redoes what a change to code that only the
later stages run alters (the 2026-12-06 fix of the fusion weights' backward) at about half the cost.

`--gate_init_alpha A` runs the rows with `gate`'s α starting at A rather than the config's (0 in both budgets; 1:
stage 1 trains LoRA on titles fused with item CF, `examples/configs/demo.json`'s choice), from a copy of the config
(`OUTPUT_DIR/config.json`) into `<name>_gate_alpha_<A>`. With `--stage1_from`, the rows with a GATE (`gate`,
`token_gate`) train their stage 1 again, since α's start reaches it; `text` and the `inject` rows take theirs.

`--seed N` (not the config's seed) runs the LLM rows with seed N (LoRA and ALG/GATE initialization, data order,
early-stopping rows) into `outputs/<name>_seed<N>` and `benchmarks/results/<name>_seed<N>*`, fusing the CF models of
the budget's run (`--cf_output_dir`, default `outputs/<name>`); `benchmarks/reproduce_seeds.py` then compares the
rows over seeds.

Writes `benchmarks/results/reproduce.json` and `.md` (AUC, UAUC, RelaImpr as in Table 3, and each row's time).
Each stage keeps the checkpoint validation AUC selects (the paper's rule) and records the one validation UAUC selects;
`--uauc_selected` scores the test set at the latter too (`examples/score.py --adapter`, about 6 min a row, once), and
the table then shows both selections.
"""

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ccf_llm.configuration_ccf_llama import FUSION_MODE_TABLE
from ccf_llm.data import COLD_RULES
from ccf_llm.metrics import rela_impr

CF_ARGS = {  # extra pretrain_cf.py arguments: CoLLM's patience 100, except SASRec (~23 s/epoch here)
    "mf": ["--patience", "100"],
    "lightgcn": ["--patience", "100"],
    "sasrec": ["--patience", "10", "--num_train_epochs", "50"],
}
PAPER_AUC = {  # Table 3 (ML-1M), Table 4
    "mf": 0.6482, "lightgcn": 0.5959, "sasrec": 0.7078, "text": 0.7097,
    "inject_mf": 0.7295, "inject_lightgcn": 0.7100, "inject_sasrec": 0.7235,
    "gate_mf": 0.7315, "gate_lightgcn": 0.7427, "gate_sasrec": 0.7526,
    "gate_lightgcn_stage1_only": 0.7025, "gate_lightgcn_end_to_end": 0.6390,
}  # fmt: skip
# name -> (fusion mode, CF sources, schedule, group)
LLM_ROWS = {
    "text": ("text", [], "lora+fusion", "LLM without CF"),
    **{
        f"inject_{cf}": ("inject", [cf], "lora+fusion", "CoLLM-style inject")
        for cf in ("mf", "lightgcn", "sasrec")
    },
    **{f"gate_{cf}": ("gate", [cf], "lora+fusion", "CCF-LLM gate") for cf in ("mf", "lightgcn", "sasrec")},
    "token_gate_lightgcn": ("token_gate", ["lightgcn"], "lora+fusion", "ablation: how to fuse"),
    "add_lightgcn": ("add", ["lightgcn"], "lora+fusion", "ablation: how to fuse"),
    "gate_lightgcn+mf": ("gate", ["lightgcn", "mf"], "lora+fusion", "ablation: what to fuse"),
    "gate_lightgcn_stage1_only": ("gate", ["lightgcn"], "lora", "ablation: training strategy"),
    "gate_lightgcn_end_to_end": ("gate", ["lightgcn"], "end_to_end", "ablation: training strategy"),
}
# row -> the row whose finished stage 1 it starts from instead of training its own (run_ctr.py --shared_stage1):
# * CoLLM-style inject rows: the text row's LoRA, as CoLLM starts its stage 2 from the TALLRec LoRA;
# * token_gate and stage-1-only on LightGCN: gate_lightgcn's stage 1, which sees exactly the same prompts (the GATE
#   starts as the constant α = gate_init_alpha in every mode and stage 1 trains LoRA only); the row loads its LoRA and
#   the frozen ALG it was trained against, and keeps its own GATE (`load_adapter_weights(skip_gate=True)`);
#   add_lightgcn too when gate_init_alpha is 1 (α = 1 is then the add fusion).
SHARED_STAGE1 = {"inject_mf": "text", "inject_lightgcn": "text", "inject_sasrec": "text",
                 "token_gate_lightgcn": "gate_lightgcn", "gate_lightgcn_stage1_only": "gate_lightgcn"}  # fmt: skip
BUDGETS = {  # name -> (config, results file): `quick` is the smoke run, `full` trains to validation convergence
    "quick": (Path("examples/configs/reproduce_ml1m.json"), "reproduce"),
    "full": (Path("examples/configs/reproduce_ml1m_full.json"), "reproduce_full"),
}
ROWS = [*CF_ARGS, *LLM_ROWS]
SELECTION_TITLE = "Learning rates for the reproduction, chosen on validation rows only"
SELECTION = {"learning_rate": [1e-3, 2e-3, 5e-3], "fusion_learning_rate": [3e-3, 1e-2, 3e-2]}  # `--select`


def command(row: str, args, out: Path | None = None) -> list[str]:
    out = str(out or row_dir(row, args))
    if row in CF_ARGS:
        return [sys.executable, "examples/pretrain_cf.py", "--backbone", row, "--data_dir", args.data_dir,
                "--output_dir", out, *CF_ARGS[row], "--report_to", "none"]  # fmt: skip
    mode, sources, schedule, _ = LLM_ROWS[row]
    cmd = [sys.executable, "examples/run_ctr.py", str(args.config), "--data_dir", args.data_dir, "--output_dir", out,
           "--fusion_modes", mode, "--schedule", schedule, "--overwrite_output_dir", "true",
           "--resume_from_checkpoint", "true"]  # fmt: skip
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    if sources:
        cmd += ["--cf_checkpoints", *(str(row_dir(cf, args)) for cf in sources)]
    source = shared_stage1_source(row, args)
    if source:
        cmd += [
            "--shared_stage1",
            str(args.output_dir / source / LLM_ROWS[source][0] / "stage_1_lora" / "final"),
        ]
    return cmd


TRAINER_SEED = 42  # TrainingArguments' seed where a config sets none


def seed_run(
    name: str, config: Path, seed: int | None, cf_output_dir: Path | None = None
) -> argparse.Namespace:
    """
    The results name, output folder, CF folder and LLM seed of the run of budget results `name` (config `config`)
    with `seed`: the budget's run itself for None or the config's own seed (`seed` None: its rows get no `--seed`);
    for another seed `<name>_seed<N>`, in `outputs/<name>_seed<N>`, fusing the CF models of `outputs/<name>` (or
    `cf_output_dir`). `main` and `reproduce_seeds.py` both name runs here (`--output_dir` overrides the folder).
    """
    if seed == json.loads(config.read_text()).get("seed", TRAINER_SEED):
        seed = None
    base = Path("outputs") / name
    if seed is None:
        return argparse.Namespace(results_name=name, output_dir=base, cf_output_dir=cf_output_dir, seed=None)
    name = f"{name}_seed{seed}"
    return argparse.Namespace(results_name=name, output_dir=Path("outputs") / name,
                              cf_output_dir=cf_output_dir or base, seed=seed)  # fmt: skip


def row_dir(row: str, args) -> Path:
    """A row's output folder: `OUTPUT_DIR/<row>`; a CF row's is in `args.cf_output_dir` where set (a `--seed` run
    reads the CF models of the config's seed: the LLM's seed varies, the CF models it fuses stay the same)."""
    cf_output_dir = getattr(args, "cf_output_dir", None)
    return (cf_output_dir if row in CF_ARGS and cf_output_dir else args.output_dir) / row


def shared_stage1_source(row: str, args) -> str | None:
    """The row whose stage 1 `row` reuses (`SHARED_STAGE1`), or None."""
    if row == "add_lightgcn":
        alpha = json.loads(args.config.read_text()).get("gate_init_alpha", 0.0)
        return "gate_lightgcn" if alpha == 1.0 else None
    return SHARED_STAGE1.get(row)


def first_stages(relative: Path, alpha_changed: bool = False) -> bool:
    """
    What `--stage1_from` takes from another run's archive (paths relative to its output folder): every kept file of
    an LLM row that trains LoRA only (`text`, `gate_lightgcn_stage1_only`), and of the other LLM rows their LoRA
    stage (`stage_1_lora/`: its log and adapter), not their later stages, results, scores or times. Those stages then
    train again from the same LoRA, e.g. after a fix to code that only they run (the fusion weights' backward). With
    `alpha_changed` (`--gate_init_alpha` other than the config's), nothing of the rows with a GATE (`gate`,
    `token_gate`): α's start reaches their stage 1.
    """
    from archive import row_of

    from ccf_llm.trainer_ccf_llama import schedule_stages

    row = row_of(relative)
    if row not in LLM_ROWS:
        return False
    mode, sources, schedule, _ = LLM_ROWS[row]
    if alpha_changed and FUSION_MODE_TABLE[mode].gate_width is not None:
        return False
    if schedule_stages(schedule, uses_cf=bool(sources)) == ("lora",):  # text runs its first stage only
        return True
    return any(part.startswith("stage_") and part.endswith("_lora") for part in relative.parts[1:])


def config_with(config: Path, output_dir: Path, **changes) -> Path:
    """`output_dir/config.json`: the run_ctr.py config `config` with `changes` (`--gate_init_alpha`), what the rows
    then run (their `run_ctr.json` keeps it; the table's command names the change)."""
    path = output_dir / "config.json"
    path.write_text(json.dumps(json.loads(config.read_text()) | changes, indent=2) + "\n")
    return path


def code_commit() -> str | None:
    """
    The git commit this script's checkout is at, `-dirty` when files other than `benchmarks/results/` (which this
    script rewrites after every row) have uncommitted changes; None without git.
    """
    git = ["git", "-C", str(Path(__file__).parent)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True
        ).stdout
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                  ":(top,exclude)benchmarks/results"], capture_output=True, text=True).stdout  # fmt: skip
    except OSError:
        return None
    return (commit.strip() + ("-dirty" if changed.strip() else "")) if commit.strip() else None


def run_logged(folder: Path, cmd: list[str], while_running=None) -> tuple[float | None, list[str]]:
    """
    Run `cmd` unless `folder/all_results.json` exists, logging to `folder.log`, calling `while_running()` (if given)
    every `WHILE_RUNNING_SECONDS` until it ends: the seconds of all attempts and the commits they ran at
    (`unrecorded` for an attempt that did not keep it).
    """
    from report import checkout_env

    timing, log = folder.with_name(f"{folder.name}.timing.json"), folder.with_name(f"{folder.name}.log")
    attempts = json.loads(timing.read_text())["attempts"] if timing.is_file() else []
    if not (folder / "all_results.json").is_file():
        if attempts and "seconds" not in attempts[-1]:  # interrupted: it ran until its log's last write
            attempts[-1]["seconds"] = round(max(log.stat().st_mtime - attempts[-1]["started"], 0.0), 1)
        attempts.append({"started": time.time(), "commit": code_commit()})
        timing.write_text(json.dumps({"attempts": attempts}) + "\n")
        print(f"[reproduce] {folder.name}: {' '.join(cmd)} (log: {log})", flush=True)
        with open(log, "a") as handle:
            process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=checkout_env())
            try:
                while (code := wait(process, WHILE_RUNNING_SECONDS)) is None:
                    if while_running:
                        while_running()
            except BaseException:
                process.terminate()
                raise
        if code:
            raise subprocess.CalledProcessError(code, cmd)
        attempts[-1]["seconds"] = round(time.time() - attempts[-1]["started"], 1)
        timing.write_text(json.dumps({"attempts": attempts}) + "\n")
    commits = list(dict.fromkeys(a.get("commit") or "unrecorded" for a in attempts))
    return (round(sum(a["seconds"] for a in attempts), 1) if attempts else None), commits


WHILE_RUNNING_SECONDS = 60.0


def wait(process: subprocess.Popen, seconds: float) -> int | None:
    """`process`'s exit status once it ends within `seconds`, else None."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def run_row(row: str, args, while_running=None) -> dict:
    if row in CF_ARGS and args.seed is not None and not (row_dir(row, args) / "all_results.json").is_file():
        raise FileNotFoundError(
            f"{row_dir(row, args)} holds no finished {row} model: a --seed run fuses the budget's CF models and "
            f"trains none; train them first (`python benchmarks/reproduce.py --budget ... --only {row}`)"
        )
    wall, commits = run_logged(row_dir(row, args), command(row, args), while_running)
    results = json.loads((row_dir(row, args) / "all_results.json").read_text())
    if row not in CF_ARGS:
        results = results["by_mode"][LLM_ROWS[row][0]]
    return {**results, "wall_seconds": wall, "commits": commits}


def stage_seconds(results: dict) -> float | None:
    """Training time of an LLM row's stages; None when every stage finished in an earlier, interrupted attempt."""
    seconds = [v for k, v in results.items() if k.startswith("stage_") and k.endswith("_seconds")]
    return round(sum(seconds), 1) if seconds else None


def select(args) -> None:
    """Choose the learning rates on validation rows only (`SELECTION`), one stage at a time, on `gate_lightgcn`.

    Stage 1's LoRA learning rate is compared with `stage1_only` runs; stage 2's fusion learning rate then with
    two-stage runs that start from the chosen stage-1 adapter (copied, so stage 1 is not retrained). Each point
    scores the same seeded `--select_eval_rows` validation rows and never reads the test set (`--score_test false`).
    Writes `benchmarks/results/reproduce_selection.{json,md}`; the config is left for a person to update.
    """
    config = json.loads(args.config.read_text())
    folder = args.output_dir / "select"
    folder.mkdir(parents=True, exist_ok=True)
    run_row("lightgcn", args)
    validation_only = ["--score_test", "false", "--eval_rows", str(args.select_eval_rows)]
    points, chosen = [], {}
    for number, (row, key) in enumerate((("gate_lightgcn_stage1_only", "learning_rate"),
                                         ("gate_lightgcn", "fusion_learning_rate"))):  # fmt: skip
        for value in SELECTION[key]:
            point = folder / f"stage{number + 1}_{key}_{value:g}"
            if number == 1:  # start from the chosen stage-1 adapter
                source = (
                    folder / f"stage1_learning_rate_{chosen['learning_rate']:g}" / "gate" / "stage_1_lora"
                )
                if not (point / "gate" / "stage_1_lora").is_dir():
                    shutil.copytree(source, point / "gate" / "stage_1_lora")
            overrides = [item for k, v in chosen.items() for item in (f"--{k}", str(v))]
            wall, _ = run_logged(
                point, command(row, args, point) + overrides + [f"--{key}", str(value)] + validation_only
            )
            results = json.loads((point / "all_results.json").read_text())
            points.append({"stage": number + 1, "row": row, **chosen, key: value,
                           "valid_auc": round(results["eval_auc"], 4), "valid_uauc": round(results["eval_uauc"], 4),
                           "eval_rows": results["eval_rows"], "wall_seconds": wall})  # fmt: skip
        chosen[key] = max((p for p in points if p["stage"] == number + 1), key=lambda p: p["valid_auc"])[key]
    from report import provenance, save_results

    from ccf_llm.precision import resolve_dtype

    differs = {k: (config.get(k), v) for k, v in chosen.items() if config.get(k) != v}
    out = {
        "provenance": provenance(resolve_dtype(config.get("dtype", "auto"))),
        "grid": SELECTION,
        "points": points,
        "chosen": chosen,
        "config": str(args.config),
        "config_differs": differs,
        "select_eval_rows": args.select_eval_rows,
        "total_wall_seconds": round(sum(p["wall_seconds"] or 0 for p in points), 1),
    }
    print("\n".join(save_results("reproduce_selection", out, render_selection, SELECTION_TITLE)))


def render_selection(out: dict) -> list[str]:
    """The selection table and how its chosen rates compare with the config: the one it ran with
    (`config_differs`, recorded then) and the config file as it is now, when this renders."""
    from report import ROOT

    differs = out["config_differs"]
    config_path = ROOT / out["config"]
    if not config_path.is_file():
        verdict = f"`{out['config']}` is gone; when the selection ran it differed in {json.dumps(differs)}."
    else:
        now = json.loads(config_path.read_text())
        now_differs = {k: (now.get(k), v) for k, v in out["chosen"].items() if now.get(k) != v}
        if now_differs:
            verdict = f"**The config differs** (config, chosen): {json.dumps(now_differs)}."
        elif differs:
            verdict = (
                f"The config held other values when the selection ran (config, chosen): {json.dumps(differs)}; "
                f"`{out['config']}` now holds the chosen ones."
            )
        else:
            verdict = "The config holds them."
    return [
        f"`gate_lightgcn`, the budget of `{out['config']}`, {out.get('select_eval_rows', 5000)} seeded validation "
        "rows per point; the test set is not read.",
        "",
        "| stage | learning_rate | fusion_learning_rate | valid AUC | valid UAUC | wall s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p['stage']} | {p['learning_rate']:g} | {p.get('fusion_learning_rate', '')} | {p['valid_auc']:.4f} "
            f"| {p['valid_uauc']:.4f} | {p['wall_seconds']} |"
            for p in out["points"]
        ),
        "",
        f"Chosen: {json.dumps(out['chosen'])}. {verdict}",
    ]


def render_uauc_selected(found: dict) -> list[str]:
    """The `uauc_selected_table` section: each LLM row's two checkpoint choices and the test set at the UAUC one."""
    if not found.get("rows"):
        return []
    states = {"same": "same checkpoint", "not scored": "not scored yet (`--uauc_selected`)",
              "stale": "scores of another checkpoint: rescore with `--uauc_selected`",
              "rolled back": "stage rolled back", "last step": "the run kept its last step",
              "no evaluations": "no evaluations", "no checkpoint": "checkpoint folder gone"}  # fmt: skip
    lines = ["", "Checkpoint chosen by validation UAUC instead of validation AUC (the paper's rule, used above; "
             "papers on this split differ in this choice): the last stage's evaluations on the early-stopping "
             "rows, the test set scored at the UAUC-selected checkpoint (`--uauc_selected`). Intervals and tests "
             "as above.", "",
             "| row | AUC-selected step (valid AUC) | UAUC-selected step (valid UAUC) | test AUC [95% CI] | "
             "test UAUC [95% CI] |", "|---|---|---|---|---|"]  # fmt: skip

    def chosen(step, value) -> str:
        return "—" if step is None else f"{step}" if value is None else f"{step} ({value:.4f})"

    for row, f in found["rows"].items():
        test = f.get("test")
        figures = (f"{test['auc']:.4f}{ci(test['auc_ci'])} | {test['uauc']:.4f}{ci(test['uauc_ci'])}" if test
                   else "— | —")  # fmt: skip
        note = f" ({states[f['state']]})" if f["state"] in states else ""
        lines.append(f"| {row}{note} | {chosen(f['best_auc_step'], f['best_eval_auc'])} | "
                     f"{chosen(f['best_uauc_step'], f['best_eval_uauc'])} | {figures} |")  # fmt: skip
    if found.get("paired"):
        lines += paired_table(found["paired"], "a − b, UAUC-selected")
    return lines


def row_order(wanted: list[str], args) -> list[str]:
    """`wanted` plus what it needs (CF rows, the rows whose stage 1 it shares), dependencies first."""
    ordered: list[str] = []

    def add(row):
        if row in ordered:
            return
        for cf in LLM_ROWS.get(row, (None, []))[1]:
            add(cf)
        if source := shared_stage1_source(row, args):
            add(source)
        ordered.append(row)

    for row in wanted:
        add(row)
    return [row for row in ordered if row in CF_ARGS] + [row for row in ordered if row not in CF_ARGS]


def row_folder(row: str, args) -> Path:
    """Where a row's model and scores are: its `row_dir` for CF rows, `OUTPUT_DIR/<row>/<fusion mode>` else."""
    return row_dir(row, args) if row in CF_ARGS else row_dir(row, args) / LLM_ROWS[row][0]


def row_scores(row: str, args, split: str = "test"):
    """The per-row scores a finished row wrote (`scores_<split>.parquet`), or None for rows run before they were kept."""
    import pandas as pd

    path = row_folder(row, args) / f"scores_{split}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def aligned(frames: dict) -> dict:
    """`frames` (row -> scores), after checking that every one is over the same test rows in the same order."""
    first = next(iter(frames.values()), None)
    for row, frame in frames.items():
        if (
            len(frame) != len(first)
            or not (
                frame[["user_id", "item_id", "label"]].values == first[["user_id", "item_id", "label"]].values
            ).all()
        ):
            raise ValueError(f"{row}'s test scores are not over the same rows as the others'")
    return frames


def ci(pair) -> str:
    """` [low, high]` of an interval, or nothing where there is none."""
    return f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""


def signed(pair) -> str:
    """` [+low, +high]` of an interval of a difference."""
    return f" [{pair[0]:+.3f}, {pair[1]:+.3f}]"


def paired_table(paired: dict, title: str) -> list[str]:
    """A blank line, then the markdown table of `user_bootstrap`'s paired comparisons (AUC and UAUC differences)."""
    lines = [
        "",
        f"| {title} | test AUC diff [95% CI] | p | test UAUC diff [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    for name, d in paired.items():
        lines.append(f"| {name} | {d['auc_diff']:+.4f}{signed(d['auc_diff_ci'])} | {d['auc_p']:.3f} | "
                     f"{d['uauc_diff']:+.4f}{signed(d['uauc_diff_ci'])} | {d['uauc_p']:.3f} |")  # fmt: skip
    return lines


SLICES = {"warm": "users and items with more than 3 train rows (CoLLM's warm rule)",
          "new users": COLD_RULES["user"] + ' (`warm_cold_masks(cold="user")`)'}  # fmt: skip


def comparisons(rows) -> tuple[dict, list[tuple[str, str]]]:
    """Among `rows`: each LLM row's CF model (its RelaImpr base), and the paired comparisons: gate and inject vs
    their CF model, gate vs inject on each CF source, gate and inject vs text, and each ablation vs the `gate` and
    `inject` rows of its (first) CF source."""
    base = {row: LLM_ROWS[row][1][0] for row in rows if row in LLM_ROWS and LLM_ROWS[row][1]}
    base = {row: cf for row, cf in base.items() if cf in rows}
    pairs = [(row, cf) for row, cf in base.items() if row.startswith(("gate_", "inject_"))]
    pairs += [(f"gate_{cf}", f"inject_{cf}") for cf in CF_ARGS if {f"gate_{cf}", f"inject_{cf}"} <= set(rows)]
    pairs += [(f"{mode}_{cf}", "text") for mode in ("gate", "inject") for cf in CF_ARGS
              if {f"{mode}_{cf}", "text"} <= set(rows)]  # fmt: skip
    ablations = [row for row in rows if row in LLM_ROWS and LLM_ROWS[row][3].startswith("ablation")]
    pairs += [(row, f"{mode}_{LLM_ROWS[row][1][0]}") for row in ablations for mode in ("gate", "inject")
              if f"{mode}_{LLM_ROWS[row][1][0]}" in set(rows) - {row}]  # fmt: skip
    return base, pairs


# the test scores at a row's UAUC-selected checkpoint; beside them, UAUC_SCORES + ".json": the checkpoint scored
UAUC_SCORES = "scores_test_uauc_selected.parquet"


def last_stage_log(row: str, args) -> tuple[Path, dict]:
    """A finished LLM row's last stage: its folder (where its checkpoints are) and its record, from the folder's
    `stage_log.json` where there is one (a stage resumed or shared from another row keeps its selection there)."""
    results = json.loads((args.output_dir / row / "all_results.json").read_text())
    last = results["by_mode"][LLM_ROWS[row][0]]["stages"][-1]
    folder = row_folder(row, args) / Path(last["output_dir"]).name
    if "shared_from" in last:  # recorded as the run named it; where that is gone, where `command` puts it now
        folder = Path(last["shared_from"]).parent
        if not folder.is_dir() and (source := shared_stage1_source(row, args)):
            folder = row_folder(source, args) / "stage_1_lora"
    log = folder / "stage_log.json"
    return folder, (json.loads(log.read_text()) if log.is_file() else last)


def uauc_selection(row: str, args) -> dict | None:
    """
    The checkpoint validation UAUC selects in `row`'s last stage, beside the one validation AUC selected (the
    paper's rule, the checkpoint every other table scores): their steps and validation figures (on the
    early-stopping rows), and `state`:

    * `same`: one checkpoint, the row's test scores serve;
    * `scored`: `UAUC_SCORES` holds the test set at this checkpoint; `stale`: at another one (rescored by
      `--uauc_selected`); `not scored`;
    * `rolled back` (the stage was undone: no checkpoint is its result), `last step` (the run kept its last weights,
      not a selected checkpoint: evaluation without early stopping), `no evaluations`, `no checkpoint` (its folder
      is gone).

    None for CF rows and unfinished rows.
    """
    if row in CF_ARGS or not (args.output_dir / row / "all_results.json").is_file():
        return None
    folder, last = last_stage_log(row, args)
    keys = ("best_auc_step", "best_eval_auc", "best_uauc_step", "best_eval_uauc")
    found = {k: last.get(k) for k in keys}
    checkpoint = folder / f"checkpoint-{last.get('best_uauc_step')}"
    found["checkpoint"] = str(checkpoint)
    sidecar = row_folder(row, args) / f"{UAUC_SCORES}.json"
    if last.get("best_uauc_step") is None:
        state = "no evaluations"
    elif last.get("rolled_back"):
        state = "rolled back"
    elif not last.get("best_checkpoint"):
        state = "last step"
    elif last["best_uauc_step"] == last["best_auc_step"]:
        state = "same"
    elif sidecar.is_file() and json.loads(sidecar.read_text())["checkpoint"] == scored_name(
        row, checkpoint, args
    ):
        state = "scored"
    elif not checkpoint.is_dir():
        state = "no checkpoint"
    else:
        state = "stale" if sidecar.is_file() else "not scored"
    return {**found, "state": state}


def scored_name(row: str, checkpoint: Path, args) -> str:
    """How `UAUC_SCORES`'s sidecar names the checkpoint it scored: relative to the row's folder, so that moving the
    output folder keeps its scores (a shared stage's checkpoint lies in another row's folder: `../..` first)."""
    return Path(os.path.relpath(checkpoint, row_folder(row, args))).as_posix()


def score_uauc_selected(row: str, found: dict, args) -> None:
    """Score the test set at `row`'s UAUC-selected checkpoint (`examples/score.py --adapter`) into `UAUC_SCORES`,
    over the same rows, in the same order, as the row's `scores_test.parquet`; the checkpoint goes beside it."""
    from report import checkout_env

    from ccf_llm.data import load_movielens_1m

    folder = row_folder(row, args)
    test = load_movielens_1m(args.data_dir)["test"].to_pandas()
    kept = row_scores(row, args)
    if kept is None:
        raise FileNotFoundError(f"{folder}/scores_test.parquet is missing: {row}'s test scores were not kept")
    aligned({"the test split": test, row: kept})
    rows = folder / "test_rows.parquet"  # the split's rows as score.py reads them (outputs/: never committed)
    test[["user_id", "history", "item_id", "label"]].to_parquet(rows, index=False)
    log = args.output_dir / f"{row}.uauc_selected.log"
    cmd = [sys.executable, "examples/score.py", "--model", str(folder), "--adapter", found["checkpoint"],
           "--input", str(rows), "--output", str(folder / UAUC_SCORES)]  # fmt: skip
    print(
        f"[reproduce] {row}: test set at the UAUC-selected checkpoint: {' '.join(cmd)} (log: {log})",
        flush=True,
    )
    try:
        with open(log, "a") as handle:
            subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, env=checkout_env())
    finally:
        rows.unlink()
    scored = {"checkpoint": scored_name(row, Path(found["checkpoint"]), args)}
    (folder / f"{UAUC_SCORES}.json").write_text(json.dumps(scored) + "\n")


def uauc_selected_table(results: dict, args) -> dict:
    """Every finished LLM row's `uauc_selection`, scoring the missing or stale ones with `--uauc_selected`, and 95%
    intervals (bootstrap over test users) of the test AUC and UAUC at those checkpoints, paired as in `intervals`."""
    import pandas as pd

    from ccf_llm.metrics import user_bootstrap

    found = {row: f for row in results if (f := uauc_selection(row, args))}
    for row, f in found.items():
        if f["state"] in ("not scored", "stale") and args.uauc_selected:
            score_uauc_selected(row, f, args)
            f["state"] = "scored"
    frames = {row: row_scores(row, args) for row in results if row in CF_ARGS}
    for row, f in found.items():
        if f["state"] == "same":
            frames[row] = row_scores(row, args)
        elif f["state"] == "scored":
            frames[row] = pd.read_parquet(row_folder(row, args) / UAUC_SCORES)
    frames = aligned({row: frame for row, frame in frames.items() if frame is not None})
    llm = [row for row in frames if row in found]
    if not llm:
        return {"rows": found}
    base, pairs = comparisons(frames)
    first = next(iter(frames.values()))
    boot = user_bootstrap({row: f["score"].to_numpy() for row, f in frames.items()}, first["label"].to_numpy(),
                          first["user_id"].to_numpy(), pairs=pairs, base_auc=base, seed=0)  # fmt: skip
    for row in llm:
        found[row]["test"] = boot["models"][row]
    return {"rows": found, "paired": boot["pairs"]}


def intervals(results: dict, args) -> dict:
    """
    95% intervals (bootstrap over test users) of every row with scores; paired tests gate vs inject, gate and
    inject vs CF and text. The same on each of `SLICES` of the test rows (`"slices"`: name -> rows, models, pairs).
    """
    from ccf_llm.data import load_movielens_1m, warm_cold_masks
    from ccf_llm.metrics import user_bootstrap

    frames = {row: row_scores(row, args) for row in results}
    frames = aligned({row: f for row, f in frames.items() if f is not None})
    if not frames:
        return {}
    first = next(iter(frames.values()))
    base, pairs = comparisons(frames)
    scores = {row: f["score"].to_numpy() for row, f in frames.items()}
    labels, users = first["label"].to_numpy(), first["user_id"].to_numpy()
    out = user_bootstrap(scores, labels, users, pairs=pairs, base_auc=base, seed=0)
    train = load_movielens_1m(args.data_dir)["train"]
    masks = dict(zip(SLICES, warm_cold_masks(users, first["item_id"], train, cold="user"), strict=True))
    out["slices"] = {
        name: {"rows": int(rows.sum()), **user_bootstrap({row: x[rows] for row, x in scores.items()}, labels[rows],
                                                         users[rows], pairs=pairs, seed=0)}
        for name, rows in masks.items()
    }  # fmt: skip
    return out


def plot(table: list[dict], path: Path) -> None:
    """Test AUC per row with its 95% interval, the row's CF model and the paper's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in table if t.get("test_auc_ci")]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.2))
    y = list(range(len(rows)))[::-1]
    for position, t in zip(y, rows, strict=True):
        color = {"CF": "tab:grey", "CoLLM-style inject": "tab:orange", "CCF-LLM gate": "tab:blue"}.get(
            t["group"], "tab:green"
        )
        low, high = t["test_auc_ci"]
        axis.errorbar(t["test_auc"], position, xerr=[[t["test_auc"] - low], [high - t["test_auc"]]], fmt="o",
                      color=color, capsize=3)  # fmt: skip
        if t["paper_test_auc"]:
            axis.plot(t["paper_test_auc"], position, "x", color="k")
    axis.set_yticks(y, [t["row"] for t in rows])
    axis.axvline(0.5, color="k", lw=0.8, ls=":")
    axis.set_xlabel("test AUC, 95% interval over users (x: the paper, Vicuna-7B)")
    axis.set_title("ML-1M (CoLLM split), SmolLM2-135M-Instruct")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def render(out: dict) -> list[str]:
    lines = [
        f"Budget: {json.dumps(out['budget'])}; validation ({out.get('eval_rows', 'all')} rows) and test sets. "
        "RelaImpr (Eq. 6) against the row's CF model, as in Table 3. Intervals: 95%, bootstrap over test users "
        f"({out.get('bootstrap_resamples', 1000)} resamples), one seed ({out['budget'].get('seed', 0)}) per row; — "
        "where the row's scores were not kept.",
        "",
        "| row | group | valid AUC | test AUC [95% CI] | test UAUC [95% CI] | RelaImpr vs CF [95% CI] | paper AUC | "
        "train s | eval s | row wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in out["rows"]:
        rel = "" if t["test_rela_impr_vs_cf"] is None else f"{t['test_rela_impr_vs_cf']:+.2f}%"
        if t.get("test_rela_impr_ci"):
            rel += f" [{t['test_rela_impr_ci'][0]:+.1f}, {t['test_rela_impr_ci'][1]:+.1f}]"
        lines.append(
            f"| {t['row']} | {t['group']} | {t['valid_auc']:.4f} | {t['test_auc']:.4f}{ci(t.get('test_auc_ci'))} | "
            f"{t['test_uauc']:.4f}{ci(t.get('test_uauc_ci'))} | {rel} | {t['paper_test_auc'] or ''} | "
            f"{t['train_seconds'] or '—'} | {t['evaluation_seconds'] or ''} | {t['wall_seconds'] or ''} |"
        )
    if out.get("paired"):
        lines += ["", "Paired comparisons on the same test users (difference a − b, 95% interval, two-sided p):",
                  *paired_table(out["paired"], "a − b")]  # fmt: skip
    if out.get("slices"):
        names = list(out["slices"])
        lines += ["", "Test AUC [95% CI] on slices of the test rows: " + "; ".join(f"{n}: {SLICES[n]}" for n in names)
                  + ". A CF model with a user table scores every new user alike (AUC 0.5 there); SASRec encodes "
                  "them from their history.", "",
                  "| row | " + " | ".join(f"{n} ({out['slices'][n]['rows']} rows)" for n in names) + " |",
                  "|---|" + "---|" * len(names)]  # fmt: skip
        for row in out["slices"][names[0]]["test_auc"]:
            cells = [out["slices"][n]["test_auc"][row] for n in names]
            lines.append(f"| {row} | " + " | ".join(f"{c['auc']:.4f}{ci(c['auc_ci'])}" for c in cells) + " |")
        pairs = list(out["slices"][names[0]]["paired"])
        lines += [] if not pairs else ["", "| a − b | " + " | ".join(f"{n}: AUC diff [95% CI], p" for n in names) + " |",
                  "|---|" + "---|" * len(names)]  # fmt: skip
        for pair in pairs:
            cells = [out["slices"][n]["paired"][pair] for n in names]
            lines.append(f"| {pair} | " + " | ".join(
                f"{d['auc_diff']:+.4f}{signed(d['auc_diff_ci'])}, {d['auc_p']:.3f}" for d in cells) + " |")  # fmt: skip
    lines += render_uauc_selected(out.get("uauc_selected", {}))
    if out.get("shared_stage1"):
        lines += ["", "Stage 1 shared (run_ctr.py --shared_stage1): "
                  + ", ".join(f"{row} from {src}" for row, src in out["shared_stage1"].items()) + "."]  # fmt: skip
    if out.get("stage1_from"):
        lines += ["", f"Stage 1 from `{out['stage1_from']}` (`--stage1_from`, its archive on this CPU kind): the rows "
                  "that train LoRA only are that run's, whole; the others loaded its LoRA stage and trained their "
                  "later stages here (their train s and row wall s count only that)."]  # fmt: skip
    by_commit = {}
    for t in out["rows"]:
        for commit in t.get("commits", []):
            by_commit.setdefault(commit, []).append(t["row"])
    if by_commit:
        lines += ["", "Code each row ran at (git commit of its attempts): "
                  + "; ".join(f"{c}: {', '.join(rows)}" for c, rows in by_commit.items()) + "."]  # fmt: skip
    total, cf_from = out["total_row_wall_seconds"], out.get("cf_rows_from")
    lines += ["", f"Sum of row wall times: {total} s ({total / 60:.1f} min)"
              + (f", of the LLM rows: the CF rows are the models in `{cf_from}`, timed there." if cf_from else ".")]  # fmt: skip
    if any(t["train_seconds"] is None for t in out["rows"]):
        lines += ["", "train s —: the row's stages finished in an earlier attempt that was then interrupted (its "
                  "training time is in the row's log and in its wall time)."]  # fmt: skip
    if out["rows_not_run"]:
        lines += ["", f"Not run yet (rerun the command to resume): {', '.join(out['rows_not_run'])}."]
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--budget", choices=BUDGETS, default="quick", help="quick (smoke run) or full")
    parser.add_argument("--output_dir", type=Path, default=None, help="default: outputs/<results name>")
    parser.add_argument("--config", type=Path, default=None, help="default: the budget's config")
    parser.add_argument(
        "--only", nargs="*", choices=ROWS, help="run these rows only, in this order (their CF rows first)"
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="tabulate the finished rows, train nothing (with --uauc_selected it still scores)",
    )
    parser.add_argument(
        "--uauc_selected",
        action="store_true",
        help="score the test set at each finished LLM row's UAUC-selected checkpoint where not yet done (~6 min a row)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the LLM rows' seed (LoRA, ALG/GATE initialization, data order, early-stopping rows), when it is not the "
        "config's: results go to <results name>_seed<N> and the CF rows are read from --cf_output_dir",
    )
    parser.add_argument(
        "--cf_output_dir",
        type=Path,
        default=None,
        help="where the CF rows are (default: OUTPUT_DIR; with --seed, outputs/<the budget's results name>)",
    )
    parser.add_argument(
        "--results_name",
        default=None,
        help="name of the results files in benchmarks/results/ (default: the budget's), e.g. for a sensitivity run",
    )
    parser.add_argument(
        "--stage1_from",
        default=None,
        help="results name of a finished run of this budget (e.g. reproduce_full; with --seed N its _seedN run) whose "
        "archive (this CPU kind's) gives the rows that train LoRA only, whole, and the other rows' LoRA stage: their "
        "later stages train again, into --results_name (`first_stages`)",
    )
    parser.add_argument(
        "--gate_init_alpha",
        type=float,
        default=None,
        help="α's start instead of the config's: the rows run a copy of the config with it (OUTPUT_DIR/config.json), "
        "by default into <results name>_gate_alpha_<A>; with --stage1_from, the rows with a GATE train stage 1 too",
    )
    parser.add_argument(
        "--select", action="store_true", help="choose the learning rates on validation (`select`)"
    )
    parser.add_argument(
        "--select_eval_rows", type=int, default=5000, help="validation rows per `--select` point"
    )
    args = parser.parse_args()
    from report import check_checkout

    check_checkout()  # before hours of training whose table would be filed under another checkout's commit
    config_path, name = BUDGETS[args.budget]
    args.config = args.config or config_path
    budget = json.loads(args.config.read_text())
    alpha_changed = args.gate_init_alpha not in (None, budget.get("gate_init_alpha", 0.0))
    if args.gate_init_alpha is not None:
        name = f"{name}_gate_alpha_{args.gate_init_alpha:g}"
    run = seed_run(args.results_name or name, args.config, args.seed, args.cf_output_dir)
    if run.seed is not None and args.select:
        parser.error("--select chooses the budget's learning rates: run it without --seed")
    if args.stage1_from:  # the other run of the same seed: its LoRA was trained against this seed's ALG
        args.stage1_from = seed_run(args.stage1_from, args.config, args.seed).results_name
        if args.stage1_from == run.results_name:
            parser.error(f"--stage1_from names this run itself ({run.results_name}): give --results_name")
    name, args.seed, args.cf_output_dir = run.results_name, run.seed, run.cf_output_dir
    args.output_dir = args.output_dir or run.output_dir
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.gate_init_alpha is not None:
        args.config = config_with(args.config, args.output_dir, gate_init_alpha=args.gate_init_alpha)
    if args.select and args.report_only:
        from report import rerender

        return print("\n".join(rerender("reproduce_selection", render_selection, SELECTION_TITLE)))
    if args.select:
        return select(args)
    from archive import movielens_splits

    rows = row_order(args.only or ROWS, args)
    start = time.perf_counter()
    splits = movielens_splits(args.data_dir)
    if args.stage1_from:
        keep("restore", args, args.stage1_from, splits,
             wanted=functools.partial(first_stages, alpha_changed=alpha_changed))  # fmt: skip
    keep("restore", args, name, splits)  # what earlier sessions on this CPU kind finished, from git
    if args.report_only:
        rows = [row for row in rows if (row_dir(row, args) / "all_results.json").is_file()]
    run_rows(rows, args, name, splits, start)


def run_rows(rows: list[str], args, name: str, splits, start: float) -> dict:
    """Run `rows` in order, skipping finished ones; the table and the archive are written after each row that ran
    here, and at the end (also when a row fails) the table once more only if it lacks rows: a row finished before
    this invocation is only read, since tabulating it again would redo the bootstrap (minutes) at every resume."""
    results, tabulated = {}, None
    try:
        for row in rows:  # finished stages are archived while a row runs; commit them as they come
            ran = not (row_dir(row, args) / "all_results.json").is_file()
            results[row] = run_row(row, args, while_running=lambda: keep("archive", args, name, splits))
            if ran:
                write_table(results, args, name, start)  # each finished row lands in the table at once
                tabulated = list(results)
                keep("archive", args, name, splits)  # and in git's folder of finished rows
    finally:  # also when a row fails: the table holds every finished row, and what it finished is kept
        try:
            if results and list(results) != tabulated:  # no finished row: no table
                write_table(results, args, name, start)
        finally:  # after the table: `--uauc_selected` scores rows there, and their scores are kept too
            keep("archive", args, name, splits)
    return results


def keep(action: str, args, name: str, splits, wanted=None) -> None:
    """`archive.restore` ("restore", of the paths `wanted` accepts) or `archive.archive` ("archive") between
    `args.output_dir` and the committed folder of this CPU kind's finished rows (`archive.archive_folder`), printing
    what moved."""
    import archive
    from report import provenance

    from ccf_llm.precision import device_precision, resolve_dtype

    folder = archive.archive_folder(name, device_precision().kind)
    if action == "restore" and (moved := archive.restore(folder, args.output_dir, splits, wanted)):
        print(f"[reproduce] restored {len(moved)} files from {folder} into {args.output_dir}", flush=True)
    if action == "archive":
        found = provenance(resolve_dtype(json.loads(args.config.read_text()).get("dtype", "auto")))
        if moved := archive.archive(args.output_dir, folder, splits, found, rows=LLM_ROWS):
            print(f"[reproduce] archived {len(moved)} files in {folder}: commit them", flush=True)


def write_table(results: dict, args, name: str, start: float) -> None:
    from report import RESULTS, provenance, save_results

    from ccf_llm.precision import resolve_dtype

    config = json.loads(args.config.read_text())
    boot = intervals(results, args)
    models = boot.get("models", {})
    table = []
    for row, r in results.items():
        cf = row if row in CF_ARGS else (LLM_ROWS[row][1] or [None])[0]
        base = results.get(cf, {}).get("test_auc") if cf and cf != row else None
        found = models.get(row, {})
        table.append({
            "row": row,
            "group": "CF" if row in CF_ARGS else LLM_ROWS[row][3],
            "valid_auc": round(r["eval_auc"], 4),
            "test_auc": round(found.get("auc", r["test_auc"]), 4),
            "test_auc_ci": found.get("auc_ci"),
            "test_uauc": round(found.get("uauc", r["test_uauc"]), 4),
            "test_uauc_ci": found.get("uauc_ci"),
            "test_rela_impr_vs_cf": None if base is None else round(rela_impr(r["test_auc"], base), 2),
            "test_rela_impr_ci": found.get("rela_impr_ci"),
            "paper_test_auc": PAPER_AUC.get(row),
            "train_seconds": r.get("train_seconds") if row in CF_ARGS else stage_seconds(r),
            "evaluation_seconds": r.get("evaluation_seconds"),
            "wall_seconds": r["wall_seconds"],
            "commits": r.get("commits", []),
        })  # fmt: skip
    keys = ("train_rows_per_stage", "history_size", "learning_rate", "fusion_learning_rate", "gate_init_alpha",
            "per_device_train_batch_size", "num_train_epochs", "lr_scheduler_type", "warmup_steps",
            "early_stopping_patience", "eval_steps", "lora_dropout", "template")  # fmt: skip
    # a --seed run's CF rows are the budget's run's: their time is counted there
    timed = [r for row, r in results.items() if args.seed is None or row not in CF_ARGS]
    out = {
        "provenance": provenance(resolve_dtype(config.get("dtype", "auto"))),
        "budget": {
            **{k: config[k] for k in keys if k in config},
            "seed": config.get("seed", TRAINER_SEED) if args.seed is None else args.seed,
        },
        "this_invocation_seconds": round(time.perf_counter() - start, 1),
        "total_row_wall_seconds": round(sum(r["wall_seconds"] or 0 for r in timed), 1),
        "rows": table,
        "paired": boot.get("pairs", {}),
        "slices": {
            name: {"rows": found["rows"], "test_auc": found["models"], "paired": found["pairs"]}
            for name, found in boot.get("slices", {}).items()
        },  # fmt: skip
        "bootstrap_resamples": boot.get("n_resamples"),
        "uauc_selected": uauc_selected_table(results, args),
        "shared_stage1": {row: src for row in results if (src := shared_stage1_source(row, args))},
        "stage1_from": getattr(args, "stage1_from", None),
        "cf_rows_from": None if args.seed is None else str(args.cf_output_dir),
        "rows_not_run": [row for row in (ROWS if args.seed is None else LLM_ROWS) if row not in results],
    }
    title = f"ML-1M reproduction (CoLLM split), SmolLM2-135M-Instruct, budget `{args.budget}`"
    print("\n".join(save_results(name, out, render, title)))
    plot(table, RESULTS / f"{name}.png")


if __name__ == "__main__":
    main()
