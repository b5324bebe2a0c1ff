"""The benchmarks' shared report: where and how a run was made, and results files with one section per CPU kind.

`benchmarks/results/<name>.json` holds `{"by_cpu_kind": {KIND: result, ...}}`, KIND being
`ccf_llm.precision.device_precision().kind` (`AMX`, `AVX512-BF16`, `AVX2`, ...; figures from before the kind was
recorded carry the kind their bf16 speed implies, with `inferred` saying why). A run replaces only its own kind's
entry, so a run on one kind of machine never replaces another kind's figures, and `<name>.md` is rendered again from
the whole file, one `## KIND` section per kind (`rerender` does only that, after a change to a render function).
"""

import json
import os
import platform
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from ccf_llm.precision import device_precision

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]  # the repository: relative paths in stored commands and configs start here


def dtype_name(dtype: torch.dtype | str) -> str:
    """`"bfloat16"` for `torch.bfloat16`; strings (`"n/a"`, `"float32, bfloat16"`) as given."""
    return str(dtype).removeprefix("torch.")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else `platform.processor()`, else `"unknown CPU"`."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else (platform.processor() or "unknown CPU")


def checkout_env(**overrides: str) -> dict[str, str]:
    """
    The environment for a benchmark's child processes (`examples/*.py`): this process's, with this checkout (`ROOT`)
    first on PYTHONPATH, so that they import `ccf_llm` from the checkout that started them, plus `overrides`.
    Without it a run from a `git worktree` imports the package that the editable install (`pip install -e .`)
    points at: another checkout's code, recorded under this one's commit.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **overrides}


def check_checkout() -> None:
    """Raise unless `ccf_llm` was imported from this checkout (`ROOT`): results are filed as this checkout's."""
    import ccf_llm

    package = Path(ccf_llm.__file__).resolve().parent
    if not package.is_relative_to(ROOT):
        raise RuntimeError(
            f"the benchmarks in {ROOT} imported ccf_llm from {package} (an editable install of another checkout?): "
            f"run them with PYTHONPATH={ROOT} so that they measure this checkout's code"
        )


def provenance(dtype: torch.dtype | str, command: str | None = None) -> dict:
    """Where and how this run was made: date (UTC), command (by default this invocation: `python` and its
    arguments), machine, the CPU's capability and kind (whether bf16 is native, and why:
    `ccf_llm.precision.device_precision`), torch, its threads and the dtype used. Raises when the package was not
    imported from this checkout (`check_checkout`)."""
    check_checkout()
    found = device_precision("cpu")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]) if command is None else command,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kind": found.kind,
        "native_bf16": found.native_bf16,
        "reason": found.reason,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "dtype": dtype_name(dtype),
    }


def provenance_line(found: dict) -> str:
    """One markdown line: command, CPU model, capability, dtype and date (older records: their `machine` string)."""
    if "cpu_capability" in found:
        machine = (
            f"{found['cpu_model']} ({found['arch']}, {found['cores']} cores, capability {found['cpu_capability']}, "
            f"torch {found['torch']}, {found['torch_threads']} threads)"
        )
    else:
        machine = found.get("machine", "an unrecorded machine")
    command = f"`{found['command']}` on " if found.get("command") else "On "
    line = f"{command}{machine}; dtype {found.get('dtype', 'unrecorded')}; {found.get('date', 'undated')}."
    return line + (f" CPU kind inferred: {found['inferred']}." if "inferred" in found else "")


def save_results(
    name: str, result: dict, render: Callable[[dict], list[str]], title: str, results_dir: Path = RESULTS
) -> list[str]:
    """Store `result` as the entry of its CPU kind (`result["provenance"]["cpu_kind"]`) in `<name>.json`, keeping
    the other kinds' entries, and write `<name>.md`: `# title`, then per kind (sorted) a `## KIND` section with the
    provenance line and `render(entry)`. Returns the markdown's lines."""
    path = results_dir / f"{name}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {"by_cpu_kind": {}}
    if "by_cpu_kind" not in stored:
        raise ValueError(f"{path} is not in the by_cpu_kind layout: move its entries under their CPU kind")
    stored["by_cpu_kind"][result["provenance"]["cpu_kind"]] = result
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2) + "\n")
    lines = [f"# {title}"]
    for kind, entry in sorted(stored["by_cpu_kind"].items()):
        lines += ["", f"## {kind}", "", provenance_line(entry["provenance"]), "", *render(entry)]
    (results_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    return lines


def rerender(
    name: str, render: Callable[[dict], list[str]], title: str, results_dir: Path = RESULTS
) -> list[str]:
    """Write `<name>.md` again from `<name>.json` with `render` (a script's `--report_only`), running nothing."""
    path = results_dir / f"{name}.json"
    entries = json.loads(path.read_text())["by_cpu_kind"] if path.is_file() else {}
    if not entries:
        raise FileNotFoundError(f"{path} holds no results to render")
    lines = []
    for entry in entries.values():
        lines = save_results(name, entry, render, title, results_dir)
    return lines
