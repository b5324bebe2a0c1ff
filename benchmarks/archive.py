"""A long benchmark's finished work, kept in git so that a session on a fresh machine resumes where the last one stopped.

    python benchmarks/archive.py --output_dir outputs/reproduce_full [--data_dir ../shared/data/ml-1m]

(`reproduce.py` does this itself every minute while a row runs and after each row, into the folder beside the
script that runs; the command archives a run of older code, or a run in another git worktree into this checkout.)

A run writes everything to `OUTPUT_DIR` (under the ignored `outputs/`), which is lost with its machine.
`archive(output_dir, folder, splits, provenance)` keeps in `folder` (committed:
`benchmarks/results/<name>_rows/<CPU kind>/`, `archive_folder`) the part of an LLM row that later runs and reports
read, each file once it is final (`KEEP`):

* `<row>.json`: the machine it was archived on (`provenance`: CPU model, capability and kind, torch, dtype) and the
  row's JSON files (results, its attempts' times, `run_ctr.json`, each finished stage's `stage_log.json` with its
  curves and checkpoint choice, the UAUC-selected scores' checkpoint);
* `<row>/.../scores_*.parquet`: the score column only, after checking the file is over its split's rows in the
  split's order; `restore` adds `user_id`, `item_id` and `label` back from the split. MovieLens may not be
  redistributed, so no ids or labels are committed;
* after a LoRA stage, its final adapter's LoRA weights (`final/`, 1.9 MB for SmolLM2-135M: what a resumed row or a
  row sharing that stage loads, `_adapter`).

CF rows are not kept: their weights (MF's table is 4.2 MB) do not belong in git, and they train again in minutes
from the same seed to the same test AUC (as they did on two CPU kinds).

`restore(folder, output_dir, splits)` writes back what `output_dir` lacks: rows finished in an earlier session are
then skipped, and an unfinished one resumes after its last finished stage. Only the CPU kind's own folder is read,
so a table never mixes rows of two kinds (bf16 on AMX or AVX512-BF16, fp32 on AVX2) unannounced. The rest of
`OUTPUT_DIR` (checkpoints mid-stage, the LLM with the CF tables, logs) is not kept: a stage interrupted with its
machine restarts from its beginning.
"""

import argparse
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

KEEP = (  # paths relative to OUTPUT_DIR: <row>/ and <row>/<fusion mode>/ of LLM rows
    "*.timing.json",
    "*/all_results.json",
    "*/run_ctr.json",
    "*/*/all_results.json",
    "*/*/scores_*.parquet",
    "*/*/scores_*.parquet.json",
    "*/*/stage_*/stage_log.json",
    "*/*/stage_*/final/adapter_config.json",
    "*/*/stage_*/final/adapter_model.safetensors",
)
ID_COLUMNS = ["user_id", "item_id", "label"]


def archive_folder(name: str, kind: str) -> Path:
    """Where `benchmarks/results/<name>` keeps the finished rows of a run on CPUs of `kind`."""
    return Path(__file__).parent / "results" / f"{name}_rows" / kind


def split_of(path: Path) -> str:
    """The split a scores file is over: `scores_validation*.parquet` or `scores_test*.parquet`."""
    for split in ("validation", "test"):
        if path.name.startswith(f"scores_{split}"):
            return split
    raise ValueError(f"{path}: a scores file is named scores_validation*.parquet or scores_test*.parquet")


def kept_files(output_dir: Path, rows=None) -> list[Path]:
    """
    The files of `output_dir` that `KEEP` names, relative to it, sorted: of `rows` only (names of its folders, default
    all).
    """
    found = {p.relative_to(output_dir) for pattern in KEEP for p in output_dir.glob(pattern) if p.is_file()}
    if rows is not None:
        found = {p for p in found if row_of(p) in rows}
    return sorted(found)


def _lora_stage(folder: Path) -> bool:
    """Whether `folder` is a finished `lora` stage (its `stage_log.json`, written after `final/`, says so): the one
    stage whose final adapter a later run loads. A last stage's (fusion, end-to-end, or a one-stage row's) is not
    kept: its row is scored right after it, and a row interrupted while scoring trains that stage again."""
    log = folder / "stage_log.json"
    return log.is_file() and json.loads(log.read_text()).get("stage") == "lora"


def _timing(source: Path) -> dict:
    """A `<row>.timing.json` to keep: an attempt still running counts until its log's last write (as `reproduce.py`
    counts an interrupted attempt), so a session that ends with it keeps a lower bound of its time."""
    timing = json.loads(source.read_text())
    last = timing["attempts"][-1] if timing["attempts"] else {}
    log = source.with_name(source.name.replace(".timing.json", ".log"))
    if last and "seconds" not in last:
        written = log.stat().st_mtime if log.is_file() else last["started"]
        last["seconds"] = round(max(written - last["started"], 0.0), 1)
        last["until_archived"] = True
    return timing


def _adapter(source: Path) -> bytes:
    """
    A `lora` stage's final adapter to keep: its LoRA weights only. The stage trained LoRA only, so its ALG/GATE
    weights are still the seeded initialization the resumed run creates again (a fifth of the file;
    `load_adapter_weights(..., keep_missing_fusion=True)` loads it as it loads a shared `text` stage).
    """
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(source, "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if "lora_" in key}
        return save(tensors, handle.metadata())


def row_of(relative: Path) -> str:
    """The row a kept file belongs to: `<row>.timing.json` or a file under `<row>/`."""
    return relative.parts[0].removesuffix(".timing.json")


def archive(
    output_dir: Path, folder: Path, splits: dict[str, pd.DataFrame], provenance: dict, rows=None
) -> list[Path]:
    """
    Keep `output_dir`'s `KEEP` files (of `rows`, default all) in `folder` where new or changed. A row's JSON files
    go into one `<row>.json` with the `provenance` (`report.provenance`) of the machine that archived them:
    `{"provenance": ..., "files": {path: content}}`. Scores are kept as their score column only, where their rows
    are `splits[split]`'s (`ID_COLUMNS`) in order (a scores file over a subsample of its split is not kept, with a
    warning: without ids it could not be restored); adapters as `_adapter` gives them. Returns the paths written
    (relative to `output_dir`).
    """
    written, records = [], {}
    for relative in kept_files(output_dir, rows):
        source, target = output_dir / relative, folder / relative
        if relative.parent.name == "final" and not _lora_stage(output_dir / relative.parent.parent):
            continue
        if relative.suffix == ".json":
            content = (
                _timing(source) if relative.name.endswith(".timing.json") else json.loads(source.read_text())
            )
            records.setdefault(row_of(relative), {})[relative.as_posix()] = content
            continue
        if relative.suffix == ".parquet":
            frame = pd.read_parquet(source)
            split = splits[split_of(source)]
            if len(frame) != len(split) or not (frame[ID_COLUMNS].values == split[ID_COLUMNS].values).all():
                warnings.warn(
                    f"{source}: not kept, its rows are not the {split_of(source)} split's rows in the split's order "
                    "(a subsample?), and its scores cannot be kept without their ids",
                    stacklevel=2,
                )
                continue
            data = frame[["score"]]
            if target.is_file() and pd.read_parquet(target).equals(data):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            data.to_parquet(target, index=False)
        else:
            data = _adapter(source)
            if target.is_file() and target.read_bytes() == data:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        written.append(relative)
    for row, files in records.items():
        record = folder / f"{row}.json"
        kept = json.loads(record.read_text())["files"] if record.is_file() else {}
        if files == kept:
            continue
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"provenance": provenance, "files": files}, indent=1) + "\n")
        written += [Path(path) for path in files if files[path] != kept.get(path)]
    return sorted(written)


def restore(
    folder: Path,
    output_dir: Path,
    splits: dict[str, pd.DataFrame],
    wanted: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Write `folder`'s kept files that `output_dir` lacks into it: the JSON files from each `<row>.json`, scores
    with `ID_COLUMNS` from `splits`, adapters as kept; with `wanted`, only the paths (relative) it accepts. Returns
    the paths restored (relative)."""
    restored = []
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        for path, content in json.loads(record.read_text())["files"].items():
            if wanted is not None and not wanted(Path(path)):
                continue
            if not (output_dir / path).exists():
                (output_dir / path).parent.mkdir(parents=True, exist_ok=True)
                (output_dir / path).write_text(json.dumps(content, indent=2) + "\n")
                restored.append(Path(path))
    for relative in kept_files(folder) if folder.is_dir() else []:  # the scores and adapters
        target = output_dir / relative
        if target.exists() or (wanted is not None and not wanted(relative)):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative.suffix == ".parquet":
            scores = pd.read_parquet(folder / relative)
            split = splits[split_of(relative)]
            if len(scores) != len(split):
                raise ValueError(
                    f"{folder / relative} has {len(scores)} scores, the {split_of(relative)} split {len(split)} "
                    "rows: it was kept from other data"
                )
            split[ID_COLUMNS].reset_index(drop=True).assign(score=scores["score"].to_numpy()).to_parquet(
                target
            )
        else:
            shutil.copyfile(folder / relative, target)
        restored.append(relative)
    return sorted(restored)


def movielens_splits(data_dir: str) -> dict[str, pd.DataFrame]:
    """CoLLM's ML-1M validation and test splits as frames (the rows scores files are over)."""
    from ccf_llm.data import load_movielens_1m

    found = load_movielens_1m(data_dir)
    return {split: found[split].select_columns(ID_COLUMNS).to_pandas() for split in ("validation", "test")}


def main():
    from ccf_llm.precision import device_precision, resolve_dtype

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output_dir", type=Path, required=True, help="the run's folder, e.g. outputs/reproduce_full"
    )
    parser.add_argument("--name", default=None, help="the results' name (default: the output folder's name)")
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    args = parser.parse_args()
    from report import provenance
    from reproduce import LLM_ROWS

    folder = archive_folder(args.name or args.output_dir.name, device_precision().kind)
    found = provenance(resolve_dtype("auto"))
    written = archive(args.output_dir, folder, movielens_splits(args.data_dir), found, rows=LLM_ROWS)
    print(f"{len(written)} files written to {folder}" + "".join(f"\n  {path}" for path in written))


if __name__ == "__main__":
    main()
