"""What the CF baselines' test AUC is made of on CoLLM's ML-1M split, and where the LLM rows stand against item-only
references.

    python benchmarks/cf_references.py --data_dir PATH/TO/ml-1m [--output_dir outputs/reproduce_full]

On CoLLM's split 3,111 of the 7,331 test rows belong to users absent from train ("new users"). MF and LightGCN give
them the zero vector (CoLLM's protocol, `zero_cold_rows`) and so score every one of their rows at logit 0: in the
pooled test AUC these rows sit, as one tie, among the warm users' scores. This script scores the test rows with the
reproduction's trained CF rows (`OUTPUT_DIR/{mf,lightgcn,sasrec}`, `benchmarks/reproduce.py`) three ways:

* `own`: the CF model as trained, the reproduction's CF row;
* `new users -> mean user` (MF, LightGCN): users absent from train get the mean of the training users' vectors, a
  cold-start fallback; the others keep their own;
* `item only`: every row scored with that mean user, i.e. by the item's CF score alone (SASRec: the mean of the
  training rows' user vectors, over rows with a history).

It then pairs the reproduction's LLM rows (`text`, `inject_*`, `gate_*`: `OUTPUT_DIR/<row>/<mode>/scores_test.parquet`,
which `reproduce.py` restores from its archive on a fresh clone) with these references on the same test users
(95% intervals and two-sided p from a bootstrap over users, 1,000 resamples), on all rows, warm users and new users,
and measures how many directions the MF and LightGCN tables use: the share of the squared singular values in the
first direction (uncentered and centered) and the effective rank (exp of the entropy of the centered shares).

Under a minute on two cores (26 s on AMX, one thread). Writes this CPU kind's entry of
`benchmarks/results/cf_references.{json,md}` and the figure `cf_references.png`; the LLM rows' scores are the CPU
kind's reproduction.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import RESULTS, provenance, save_results
from reproduce import LLM_ROWS, aligned, ci, paired_table
from sasrec_user_vectors import encode
from transformers import AutoModel

from ccf_llm.data import CTRRows, load_movielens_1m
from ccf_llm.metrics import user_bootstrap

CF_SOURCES = ("mf", "lightgcn", "sasrec")
REFERENCES = ("own", "new users -> mean user", "item only")
SLICES = ("warm users", "new users")


def reference_name(cf: str, reference: str) -> str:
    return cf if reference == "own" else f"{cf} ({reference})"


@torch.no_grad()
def reference_scores(model, test: CTRRows, train: CTRRows) -> dict[str, np.ndarray]:
    """`REFERENCES` -> test-row scores (logits) of a trained CF model: a table model (MF, LightGCN) through
    `export_cf_embeddings`, SASRec through its history encoder (no fallback: it has no user table)."""
    model = model.float().eval()
    users, items = test.tensors["user_ids"], test.tensors["item_ids"]
    if hasattr(model, "encode_history"):
        history = train.tensors["history"]
        mean_user = encode(model, history[(history != 0).any(-1)]).mean(0)
        item_vectors = model.item_embeddings.weight[items].float()
        own = (encode(model, test.tensors["history"]) * item_vectors).sum(-1)
        return {"own": own.numpy(), "item only": (item_vectors @ mean_user).numpy()}
    user_table, item_table = (t.float() for t in model.export_cf_embeddings())
    mean_user = user_table[train.tensors["user_ids"].unique()].mean(0)
    new = ~torch.isin(users, train.tensors["user_ids"])
    fallback = torch.where(new[:, None], mean_user, user_table[users])
    return {
        "own": (user_table[users] * item_table[items]).sum(-1).numpy(),
        "new users -> mean user": (fallback * item_table[items]).sum(-1).numpy(),
        "item only": (item_table[items] @ mean_user).numpy(),
    }


def split_references(model, splits: dict) -> dict[str, np.ndarray]:
    """`reference_scores` of `model` on the test split of `splits` (`load_movielens_1m`), its train split giving the
    mean user and which users are new."""
    max_history = getattr(model.config, "max_history", 1)
    return reference_scores(
        model, *(CTRRows(splits[name], max_history=max_history) for name in ("test", "train"))
    )


def check_test_order(frame: pd.DataFrame, test: pd.DataFrame, what: str) -> None:
    """Raise unless `frame`'s rows are `test`'s (by `user_id`, `item_id`), in the same order: scores from another
    split or another order would be paired with the wrong rows."""
    ids, expected = (f[["user_id", "item_id"]].to_numpy() for f in (frame, test))
    if ids.shape != expected.shape or not (ids == expected).all():
        raise ValueError(f"{what}'s test scores are not over the test split's rows in its order")


def spectrum(table: torch.Tensor) -> dict:
    """How many directions the rows of `table` use (all-zero rows, the cold ones, left out): the share of the
    squared singular values in the first direction, uncentered and centered, and the effective rank of the centered
    rows, `exp(-sum p log p)` over the shares `p`."""
    rows = table.double()[table.abs().sum(-1) > 0]
    shares = torch.linalg.svdvals(rows).pow(2)
    centered = torch.linalg.svdvals(rows - rows.mean(0)).pow(2)
    shares, centered = shares / shares.sum(), centered / centered.sum()
    entropy = -(centered * torch.log(centered.clamp_min(1e-300))).sum()
    return {"rows": len(rows), "dims": rows.shape[1], "first_share": float(shares[0]),
            "first_share_centered": float(centered[0]), "effective_rank": float(entropy.exp())}  # fmt: skip


def llm_scores(output_dir: Path, cf: str) -> dict[str, pd.DataFrame]:
    """The finished LLM rows on CF source `cf` (and `text`) with test scores in `output_dir`."""
    rows = ["text", f"inject_{cf}", f"gate_{cf}"]
    paths = {row: output_dir / row / LLM_ROWS[row][0] / "scores_test.parquet" for row in rows}
    return {row: pd.read_parquet(path) for row, path in paths.items() if path.is_file()}


def compare(cf: str, model, splits: dict, output_dir: Path, n_resamples: int) -> dict:
    """One CF source: its references, the LLM rows on it and `text`, intervals and paired differences (each LLM row
    against each reference), on all test rows and on `SLICES`; the tables' spectra for a table model."""
    test, train_users = splits["test"].to_pandas(), np.unique(splits["train"]["user_id"])
    frames = aligned(
        {cf: pd.read_parquet(output_dir / cf / "scores_test.parquet"), **llm_scores(output_dir, cf)}
    )
    check_test_order(frames[cf], test, str(output_dir / cf))
    references = split_references(model, splits)
    if not np.allclose(references["own"], frames[cf]["score"], atol=1e-4):
        raise ValueError(f"{output_dir / cf}'s model does not give the test scores it wrote")
    scores = {reference_name(cf, r): s for r, s in references.items()}
    scores.update({row: f["score"].to_numpy() for row, f in frames.items() if row != cf})
    llm = [row for row in frames if row != cf]
    pairs = [(row, reference_name(cf, r)) for row in llm for r in references]
    labels, users = test["label"].to_numpy(), test["user_id"].to_numpy()
    new = ~np.isin(users, train_users)
    out = {
        "order": list(scores),
        **user_bootstrap(scores, labels, users, pairs=pairs, n_resamples=n_resamples),
    }
    out["slices"] = {
        name: {"rows": int(mask.sum()), **user_bootstrap({k: v[mask] for k, v in scores.items()}, labels[mask],
                                                         users[mask], pairs=pairs, n_resamples=n_resamples)}
        for name, mask in zip(SLICES, (~new, new), strict=True)
    }  # fmt: skip
    if not hasattr(model, "encode_history"):
        user_table, item_table = model.export_cf_embeddings()
        out["spectrum"] = {"users": spectrum(user_table[1:]), "items": spectrum(item_table[1:])}
    return out


def render(entry: dict) -> list[str]:
    lines = [
        f"Test rows: {entry['test_rows']:,}, of which {entry['new_user_rows']:,} of users absent from train (new "
        f"users). Intervals: 95%, bootstrap over test users ({entry['n_resamples']} resamples); p two-sided. The LLM "
        "rows' scores are this CPU kind's reproduction (`reproduce_full`), one seed each. References: `own` is the CF "
        "row as trained (new users at the zero vector, CoLLM's protocol); `new users -> mean user` gives them the mean "
        "of the training users' vectors; `item only` scores every row with that mean user."
        + (
            f" The script ran {entry['seconds']} s (the CF rows trained before it)."
            if "seconds" in entry
            else ""
        ),
    ]
    for cf, found in entry["sources"].items():
        lines += ["", f"### {cf}", "", "| model | test AUC [95% CI] | UAUC [95% CI] | warm users AUC | new users AUC |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name in found["order"]:
            m, warm, new = (
                s["models"][name]
                for s in (found, found["slices"]["warm users"], found["slices"]["new users"])
            )
            lines.append(f"| {name} | {m['auc']:.4f}{ci(m['auc_ci'])} | {m['uauc']:.4f}{ci(m['uauc_ci'])} | "
                         f"{warm['auc']:.4f} | {new['auc']:.4f} |")  # fmt: skip
        lines += paired_table(found["pairs"], f"{cf}: LLM row − reference, all test rows")
        for name in SLICES:
            lines += paired_table(found["slices"][name]["pairs"], f"{cf}: LLM row − reference, {name}")
        if "spectrum" in found:
            lines += ["", "| table | rows | dims | first direction's share | centered | effective rank (centered) |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for side, s in found["spectrum"].items():
                lines.append(f"| {side} | {s['rows']} | {s['dims']} | {s['first_share']:.3f} | "
                             f"{s['first_share_centered']:.3f} | {s['effective_rank']:.1f} |")  # fmt: skip
    return lines


def plot(entry: dict, path: Path) -> None:
    """Test AUC with its 95% interval per model, one panel per CF source: references grey, LLM rows coloured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = entry["sources"]
    figure, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 3.2), sharex=True)
    for axis, (cf, found) in zip(np.atleast_1d(axes), sources.items(), strict=True):
        names = found["order"]
        for position, name in enumerate(reversed(names)):
            m = found["models"][name]
            low, high = m["auc_ci"]
            color = {"text": "tab:green", "inject": "tab:orange", "gate": "tab:blue"}.get(
                name.split("_")[0], "grey"
            )
            axis.errorbar(m["auc"], position, xerr=[[m["auc"] - low], [high - m["auc"]]], fmt="o", color=color,
                          capsize=3)  # fmt: skip
        axis.set_yticks(range(len(names)), list(reversed(names)), fontsize=8)
        axis.set_title(cf)
        axis.axvline(0.5, color="k", lw=0.8, ls=":")
        axis.set_xlabel("test AUC, 95% interval over users")
    figure.suptitle("ML-1M (CoLLM split): CF references and LLM rows (SmolLM2-135M, one seed)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", type=Path, default=None)
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/reproduce_full"))
    parser.add_argument("--n_resamples", type=int, default=1000)
    args = parser.parse_args()
    start = time.perf_counter()
    splits = load_movielens_1m(args.data_dir)
    sources = {}
    for cf in CF_SOURCES:
        if not (args.output_dir / cf / "scores_test.parquet").is_file():
            raise FileNotFoundError(
                f"{args.output_dir / cf} holds no trained CF row: run benchmarks/reproduce.py first"
            )
        model = AutoModel.from_pretrained(args.output_dir / cf)
        sources[cf] = compare(cf, model, splits, args.output_dir, args.n_resamples)
    new = ~np.isin(splits["test"]["user_id"], np.unique(splits["train"]["user_id"]))
    entry = {"provenance": provenance("float32"), "test_rows": len(new), "new_user_rows": int(new.sum()),
             "n_resamples": args.n_resamples, "sources": sources,
             "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    print("\n".join(save_results("cf_references", entry, render, "CF references on CoLLM's ML-1M split")))
    plot(entry, RESULTS / "cf_references.png")


if __name__ == "__main__":
    main()
