"""Time the README's main job (the offline demo) end to end and record its results.

    python benchmarks/demo.py [CONFIG] [--dtype auto|float32|bfloat16]   (default examples/configs/demo.json, auto)
    python benchmarks/demo.py --report_only                               (rewrite demo.md from demo.json)

Runs `examples/run_ctr.py CONFIG` in a fresh process (so the ~9 s of imports count), then records in
`benchmarks/results/demo.{json,md}` (this CPU kind's section, `benchmarks/report.py`): wall time, per-stage times and
validation/test AUC of every mode and of the CF backbone, and the config's settings (a run whose config has
changed since says which settings under its table), one run per dtype. `--dtype float32` on a CPU with native
bf16 shows what the fp32 path costs (the path an AVX2-only CPU takes by default; fp32 matmuls run at about the same
speed on AVX2 and AVX512 EPYCs). Goal: under 10 minutes on AMX, under 20 on AVX2.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from report import RESULTS, ROOT, checkout_env, dtype_name, provenance, rerender, save_results

from ccf_llm.data import COLD_RULES
from ccf_llm.precision import device_precision, resolve_dtype

TITLE = "The README's main job: offline demo on the synthetic log, SmolLM2-135M-Instruct"


def split(results: dict, subset: str) -> str:
    value = results.get(f"test_auc_{subset}")
    return "" if value is None else f"{value:.4f}"


def render(entry: dict) -> list[str]:
    lines = []
    for dtype, run in entry["runs"].items():
        lines += [
            f"**{dtype}**: `{run['command']}`, {run['date']}: **{run['wall_seconds'] / 60:.1f} min** wall, imports "
            "included.",
            "",
            "| model | valid AUC | test AUC | test UAUC | warm test AUC | cold test AUC | training (s) |",
            "|---|---|---|---|---|---|---|",
            f"| CF only ({run['cf']['backbone']}) | {run['cf']['eval_auc']:.4f} | "
            f"{run['cf'].get('test_auc_llm_rows', run['cf']['test_auc']):.4f} | {run['cf']['test_uauc']:.4f} | "
            f"{split(run['cf'], 'warm')} | {split(run['cf'], 'cold')} | |",
        ]
        for mode, r in run["modes"].items():
            seconds = sum(v for k, v in r.items() if k.startswith("stage_") and v is not None)
            lines.append(
                f"| `{mode}` | {r['eval_auc']:.4f} | {r['test_auc']:.4f} | {r['test_uauc']:.4f} | {split(r, 'warm')} | "
                f"{split(r, 'cold')} | {seconds:.0f} |"
            )
        config = run["command"].split()[2]  # "python examples/run_ctr.py CONFIG ...": no spaces
        now = json.loads((ROOT / config).read_text()) if (ROOT / config).is_file() else None
        if "warm_cold_rows" in run:
            rows = run["warm_cold_rows"]
            lines += [
                "",
                f"Warm: {rows['warm']} test rows whose user and item have more than 3 train rows; cold: {rows['cold']} "
                f"test rows ({run['cold_rule']} rule: {COLD_RULES[run['cold_rule']]}). The CF model's test AUC is "
                "on the test rows the LLM modes scored. Under the table this run printed:",
                "",
                f"> {run['table_note']}" if run.get("table_note") else "> (no note)",
            ]
            if now is None:
                lines += ["", f"`{config}` is no longer in the repository: the demo may print another note."]
            elif now.get("table_note") != run.get("table_note"):
                lines += ["", f"`table_note` in `{config}` has changed since; the demo now prints:", "",
                          f"> {now.get('table_note')}"]  # fmt: skip
        lines += changed_settings(run, config, now)
        lines.append("")
    return lines


def settings(config: dict) -> dict:
    """What a demo config trains and scores: all of it but the note it prints."""
    return {k: v for k, v in config.items() if k != "table_note"}


def changed_settings(run: dict, config: str, now: dict | None) -> list[str]:
    """A line naming the settings of the config `config` (`now`, None where it is gone) that differ from the run's
    (`run["config"]`): its table is not what the config trains now."""
    if "config" not in run or now is None:
        return []
    then, now = run["config"], settings(now)
    changed = [f"`{k}` {json.dumps(then.get(k))} → {json.dumps(now.get(k))}"
               for k in sorted(then.keys() | now.keys()) if then.get(k) != now.get(k)]  # fmt: skip
    if not changed:
        return []
    return ["", f"`{config}` has changed since this run ({', '.join(changed)}): it now trains another model."]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default="examples/configs/demo.json")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--report_only", action="store_true", help="rewrite demo.md from demo.json, run nothing"
    )
    args = parser.parse_args()
    if args.report_only:
        return print("\n".join(rerender("demo", render, TITLE)))
    config = json.loads(Path(args.config).read_text())
    output_dir = Path(config["output_dir"])
    command = ["python", "examples/run_ctr.py", args.config] + (
        ["--dtype", args.dtype] if args.dtype != "auto" else []
    )
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *command[1:], "--overwrite_output_dir", "true"], check=True, env=checkout_env()
    )
    wall = time.perf_counter() - start
    summary = json.loads((output_dir / "all_results.json").read_text())
    cf = json.loads(next(output_dir.glob("cf_*/all_results.json")).read_text())
    dtype = resolve_dtype(args.dtype)
    run = {
        "command": " ".join(command),
        "date": provenance(dtype, command="")["date"],
        "wall_seconds": round(wall, 1),
        "cf": {
            "backbone": cf["backbone"],
            **{k[3:]: v for k, v in summary.items() if k.startswith("cf_test_auc_")},
            **{k: cf[k] for k in ("eval_auc", "test_auc", "test_uauc")},
        },  # fmt: skip
        **{k: summary[k] for k in ("warm_cold_rows", "cold_rule") if k in summary},
        "table_note": config.get("table_note"),
        "config": settings(config),
        "modes": {
            mode: {
                k: v
                for k, v in r.items()
                if k.startswith(("eval_auc", "eval_uauc", "test_auc", "test_uauc", "stage_", "evaluation_"))
                and not isinstance(v, list)
            }  # fmt: skip
            for mode, r in summary["by_mode"].items()
        },
    }
    kind = device_precision().kind
    stored = (
        json.loads((RESULTS / "demo.json").read_text())["by_cpu_kind"]
        if (RESULTS / "demo.json").is_file()
        else {}
    )
    runs = {
        **stored.get(kind, {}).get("runs", {}),
        dtype_name(dtype) + (" (auto)" if args.dtype == "auto" else ""): run,
    }
    entry = {"provenance": provenance(", ".join(runs), command=run["command"]), "runs": runs}
    print("\n".join(save_results("demo", entry, render, TITLE)))


if __name__ == "__main__":
    main()
