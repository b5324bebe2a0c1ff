"""Reproduce the paper's Table 3, Table 4 and Fig. 3 on ML-1M (CoLLM's split) at one fixed CPU budget, resumably.

    python benchmarks/reproduce.py [--data_dir ../shared/data/ml-1m] [--output_dir outputs/reproduce]
                                   [--config examples/configs/reproduce_ml1m.json] [--only ROW ...]
    python benchmarks/reproduce.py --select [--select_eval_rows 5000]   # choose the learning rates first

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
exists: a rerun skips finished rows and resumes an unfinished one after its last finished stage. A row's time is
the sum of its attempts (`OUTPUT_DIR/<row>.timing.json`); an interrupted attempt counts until its log's last write.

Writes `benchmarks/results/reproduce.json` and `.md` (AUC, UAUC, RelaImpr as in Table 3, and each row's time).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ccf_llm.metrics import rela_impr

RESULTS = Path(__file__).resolve().parent / "results"
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
    "text": ("text", [], "two_stage", "LLM without CF"),
    **{
        f"inject_{cf}": ("inject", [cf], "two_stage", "CoLLM-style inject")
        for cf in ("mf", "lightgcn", "sasrec")
    },
    **{f"gate_{cf}": ("gate", [cf], "two_stage", "CCF-LLM gate") for cf in ("mf", "lightgcn", "sasrec")},
    "token_gate_lightgcn": ("token_gate", ["lightgcn"], "two_stage", "ablation: how to fuse"),
    "add_lightgcn": ("add", ["lightgcn"], "two_stage", "ablation: how to fuse"),
    "gate_lightgcn+mf": ("gate", ["lightgcn", "mf"], "two_stage", "ablation: what to fuse"),
    "gate_lightgcn_stage1_only": ("gate", ["lightgcn"], "stage1_only", "ablation: training strategy"),
    "gate_lightgcn_end_to_end": ("gate", ["lightgcn"], "end_to_end", "ablation: training strategy"),
}
ROWS = [*CF_ARGS, *LLM_ROWS]
SELECTION = {"learning_rate": [1e-3, 2e-3, 5e-3], "fusion_learning_rate": [3e-3, 1e-2, 3e-2]}  # `--select`


def command(row: str, args, out: Path | None = None) -> list[str]:
    out = str(out or args.output_dir / row)
    if row in CF_ARGS:
        return [sys.executable, "examples/pretrain_cf.py", "--backbone", row, "--data_dir", args.data_dir,
                "--output_dir", out, *CF_ARGS[row], "--report_to", "none"]  # fmt: skip
    mode, sources, schedule, _ = LLM_ROWS[row]
    cmd = [sys.executable, "examples/run_ctr.py", str(args.config), "--data_dir", args.data_dir, "--output_dir", out,
           "--fusion_modes", mode, "--schedule", schedule, "--overwrite_output_dir", "true",
           "--resume_from_checkpoint", "true"]  # fmt: skip
    if sources:
        cmd += ["--cf_checkpoints", *(str(args.output_dir / cf) for cf in sources)]
    return cmd


def run_logged(folder: Path, cmd: list[str]) -> float | None:
    """Run `cmd` unless `folder/all_results.json` exists, logging to `folder.log`; the seconds of all attempts."""
    timing, log = folder.with_name(f"{folder.name}.timing.json"), folder.with_name(f"{folder.name}.log")
    attempts = json.loads(timing.read_text())["attempts"] if timing.is_file() else []
    if not (folder / "all_results.json").is_file():
        if attempts and "seconds" not in attempts[-1]:  # interrupted: it ran until its log's last write
            attempts[-1]["seconds"] = round(max(log.stat().st_mtime - attempts[-1]["started"], 0.0), 1)
        attempts.append({"started": time.time()})
        timing.write_text(json.dumps({"attempts": attempts}) + "\n")
        print(f"[reproduce] {folder.name}: {' '.join(cmd)} (log: {log})", flush=True)
        with open(log, "a") as handle:
            subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT)
        attempts[-1]["seconds"] = round(time.time() - attempts[-1]["started"], 1)
        timing.write_text(json.dumps({"attempts": attempts}) + "\n")
    return round(sum(a["seconds"] for a in attempts), 1) if attempts else None


def run_row(row: str, args) -> dict:
    wall = run_logged(args.output_dir / row, command(row, args))
    results = json.loads((args.output_dir / row / "all_results.json").read_text())
    if row not in CF_ARGS:
        results = results["by_mode"][LLM_ROWS[row][0]]
    return {**results, "wall_seconds": wall}


def write_results(name: str, out: dict, lines: list[str]) -> None:
    """`benchmarks/results/<name>.json` (`out`) and `.md` (`lines`), and print the table."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


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
            wall = run_logged(
                point, command(row, args, point) + overrides + [f"--{key}", str(value)] + validation_only
            )
            results = json.loads((point / "all_results.json").read_text())
            points.append({"stage": number + 1, "row": row, **chosen, key: value,
                           "valid_auc": round(results["eval_auc"], 4), "valid_uauc": round(results["eval_uauc"], 4),
                           "eval_rows": results["eval_rows"], "wall_seconds": wall})  # fmt: skip
        chosen[key] = max((p for p in points if p["stage"] == number + 1), key=lambda p: p["valid_auc"])[key]
    differs = {k: (config[k], v) for k, v in chosen.items() if config[k] != v}
    out = {
        "command": "python benchmarks/reproduce.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "grid": SELECTION,
        "points": points,
        "chosen": chosen,
        "config": str(args.config),
        "config_differs": differs,
        "total_wall_seconds": round(sum(p["wall_seconds"] or 0 for p in points), 1),
    }
    lines = [
        "# Learning rates for the reproduction, chosen on validation rows only",
        "",
        f"`{out['command']}` on {out['machine']}, {out['date']}. `gate_lightgcn`, the budget of `{args.config}`, "
        f"{args.select_eval_rows} seeded validation rows per point; the test set is not read.",
        "",
        "| stage | learning_rate | fusion_learning_rate | valid AUC | valid UAUC | wall s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p['stage']} | {p['learning_rate']:g} | {p.get('fusion_learning_rate', '')} | {p['valid_auc']:.4f} "
            f"| {p['valid_uauc']:.4f} | {p['wall_seconds']} |"
            for p in points
        ),
        "",
        f"Chosen: {json.dumps(chosen)}. "
        + (
            f"**The config differs** (config, chosen): {json.dumps(differs)}."
            if differs
            else "The config holds them."
        ),
    ]
    write_results("reproduce_selection", out, lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/reproduce"))
    parser.add_argument("--config", type=Path, default=Path("examples/configs/reproduce_ml1m.json"))
    parser.add_argument(
        "--only", nargs="*", choices=ROWS, help="run these rows only, in this order (their CF rows first)"
    )
    parser.add_argument("--report_only", action="store_true", help="tabulate the finished rows, run nothing")
    parser.add_argument(
        "--select", action="store_true", help="choose the learning rates on validation (`select`)"
    )
    parser.add_argument(
        "--select_eval_rows", type=int, default=5000, help="validation rows per `--select` point"
    )
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.select:
        return select(args)
    wanted = args.only or ROWS
    needed = {cf for row in wanted if row in LLM_ROWS for cf in LLM_ROWS[row][1]} | set(wanted)
    rows = [row for row in CF_ARGS if row in needed] + [row for row in wanted if row not in CF_ARGS]
    start = time.perf_counter()
    if args.report_only:
        rows = [row for row in rows if (args.output_dir / row / "all_results.json").is_file()]
    results = {row: run_row(row, args) for row in rows}
    missing = [row for row in ROWS if row not in results]
    config = json.loads(args.config.read_text())
    table = []
    for row, r in results.items():
        cf = row if row in CF_ARGS else (LLM_ROWS[row][1] or [None])[0]
        base = results.get(cf, {}).get("test_auc") if cf and cf != row else None
        table.append({
            "row": row,
            "group": "CF" if row in CF_ARGS else LLM_ROWS[row][3],
            "valid_auc": round(r["eval_auc"], 4),
            "test_auc": round(r["test_auc"], 4),
            "test_uauc": round(r["test_uauc"], 4),
            "test_rela_impr_vs_cf": None if base is None else round(rela_impr(r["test_auc"], base), 2),
            "paper_test_auc": PAPER_AUC.get(row),
            "train_seconds": r.get("train_seconds") if row in CF_ARGS else stage_seconds(r),
            "evaluation_seconds": r.get("evaluation_seconds"),
            "wall_seconds": r["wall_seconds"],
        })  # fmt: skip
    out = {
        "command": "python benchmarks/reproduce.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "budget": {
            k: config[k]
            for k in (
                "train_rows_per_stage",
                "history_size",
                "dtype",
                "learning_rate",
                "fusion_learning_rate",
                "per_device_train_batch_size",
                "lora_dropout",
                "template",
            )
        },  # fmt: skip
        "this_invocation_seconds": round(time.perf_counter() - start, 1),
        "total_row_wall_seconds": round(sum(r["wall_seconds"] or 0 for r in results.values()), 1),
        "rows": table,
        "rows_not_run": missing,
    }
    lines = [
        "# ML-1M reproduction (CoLLM split), SmolLM2-135M-Instruct, one CPU budget",
        "",
        f"`{out['command']}` on {out['machine']}, {out['date']}. Budget: {json.dumps(out['budget'])}; full "
        "validation (10,401) and test (7,331) sets. RelaImpr (Eq. 6) against the row's CF model, as in Table 3.",
        "",
        "| row | group | valid AUC | test AUC | test UAUC | RelaImpr vs CF | paper AUC | train s | eval s | row wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        rel = "" if t["test_rela_impr_vs_cf"] is None else f"{t['test_rela_impr_vs_cf']:+.2f}%"
        lines.append(
            f"| {t['row']} | {t['group']} | {t['valid_auc']:.4f} | {t['test_auc']:.4f} | {t['test_uauc']:.4f} | "
            f"{rel} | {t['paper_test_auc'] or ''} | {t['train_seconds'] or '—'} | {t['evaluation_seconds'] or ''} | "
            f"{t['wall_seconds'] or ''} |"
        )
    total = out["total_row_wall_seconds"]
    lines += ["", f"Sum of row wall times: {total} s ({total / 60:.1f} min; the budget is 150 min)."]
    if any(t["train_seconds"] is None for t in table):
        lines += ["", "train s —: the row's stages finished in an earlier attempt that was then interrupted (its "
                  "training time is in the row's log and in its wall time)."]  # fmt: skip
    if missing:
        lines += ["", f"Not run yet (rerun the command to resume): {', '.join(missing)}."]
    write_results("reproduce", out, lines)


if __name__ == "__main__":
    main()
