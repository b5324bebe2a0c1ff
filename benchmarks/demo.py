"""Time the README's main job (the offline demo) end to end and record its results.

    python benchmarks/demo.py [CONFIG] (default examples/configs/demo.json)

Runs `examples/run_ctr.py CONFIG` in a fresh process (so the ~9 s of imports count), then writes
`benchmarks/results/demo.{json,md}`: wall time, per-stage times, and validation/test AUC of every mode and of the
CF backbone. Goal: under 10 minutes on the 2-core development machine.
"""

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    config = sys.argv[1] if len(sys.argv) > 1 else "examples/configs/demo.json"
    output_dir = Path(json.loads(Path(config).read_text())["output_dir"])
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "examples/run_ctr.py", config, "--overwrite_output_dir", "true"], check=True
    )
    wall = time.perf_counter() - start
    summary = json.loads((output_dir / "all_results.json").read_text())
    cf = json.loads(next(output_dir.glob("cf_*/all_results.json")).read_text())
    modes = {
        mode: {
            k: v
            for k, v in r.items()
            if k.startswith(("eval_auc", "eval_uauc", "test_auc", "test_uauc", "stage_", "evaluation_"))
        }
        for mode, r in summary["by_mode"].items()
    }
    out = {
        "command": f"python examples/run_ctr.py {config}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "wall_seconds": round(wall, 1),
        "cf": {k: cf[k] for k in ("backbone", "eval_auc", "test_auc", "test_uauc")},
        "modes": modes,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# The README's main job: offline demo on the synthetic log, SmolLM2-135M-Instruct",
        "",
        f"`{out['command']}` on {out['machine']}, {out['date']}: **{wall / 60:.1f} min** wall, imports included "
        "(goal: under 10 min).",
        "",
        "| model | valid AUC | test AUC | test UAUC | training (s) |",
        "|---|---|---|---|---|",
        f"| CF only ({cf['backbone']}) | {cf['eval_auc']:.4f} | {cf['test_auc']:.4f} | {cf['test_uauc']:.4f} | |",
    ]
    for mode, r in modes.items():
        seconds = sum(v for k, v in r.items() if k.startswith("stage_"))
        lines.append(
            f"| `{mode}` | {r['eval_auc']:.4f} | {r['test_auc']:.4f} | {r['test_uauc']:.4f} | {seconds:.0f} |"
        )
    (RESULTS / "demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
