"""Analysis of a trained CCF-LLM: the paper's Fig. 4 (t-SNE of item embeddings) and Table 5 (a case study).

    python examples/analyze.py [--gate_model outputs/reproduce/gate_lightgcn/gate]
                               [--text_model outputs/reproduce/text/text] [--cf_model outputs/reproduce/lightgcn]
                               [--dataset ml-1m --data_dir ../shared/data/ml-1m] [--output_dir outputs/analysis]

The defaults are the folders `benchmarks/reproduce.py` writes. Outputs in `--output_dir`:

* `tsne.png` (Fig. 4): t-SNE of three embeddings of `--items` (1,000) items: the aligned CF embedding ALG(x_i^CF)
  (Eq. 2), the LLM embedding (mean of the title's token embeddings x_i^SM) and the fused embedding (mean over the
  title tokens of Eq. 4). `analysis.json` adds numbers: cosine similarities between the three, and the size of the
  fused-in CF part ||α ⊙ ALG(x^CF)|| relative to ||x^SM||.
* `case_study.md` (Table 5): for the warm test user (one with train rows) with the most test rows of both labels, each candidate's rank
  by the CF model, by `text` and by `gate`, with per-user AUCs.

These outputs hold MovieLens titles and ratings: keep them out of the repository (its license forbids
redistribution). Default output folder `outputs/` is git-ignored.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.manifold import TSNE
from sklearn.metrics import roc_auc_score
from transformers import AutoModel

from ccf_llm import CCFLlamaProcessor, load_ctr_model, score_rows
from ccf_llm.data import item_titles, load_movielens_1m
from ccf_llm.modeling_ccf_llama import sum_cf_sources
from ccf_llm.ragged import latest_items, to_ragged
from ccf_llm.synthetic import make_demo_log


def item_embeddings(model, processor, item_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per item: aligned CF (Eq. 2), mean LLM title embedding, mean fused title embedding (Eq. 4)."""
    ids, mask = processor.title_token_ids(item_ids)
    marks = torch.as_tensor(item_ids)[:, None] * mask
    with torch.no_grad():
        semantic = model.get_input_embeddings()(ids).float()
        fused = model.embed_hybrid_prompt(ids, token_item_ids=marks, attention_mask=mask).float()
        aligned = sum_cf_sources(
            model.model.get_cf_features(torch.as_tensor(item_ids), "item")
        ).float()  # Eq. 2, 7
    weights = (mask / mask.sum(1, keepdim=True)).unsqueeze(-1)
    return {
        "aligned_cf": aligned.numpy(),
        "llm": (semantic * weights).sum(1).numpy(),
        "fused": (fused * weights).sum(1).numpy(),
        "cf_part_norm_ratio": float(((fused - semantic).norm(dim=-1)[mask.bool()] / semantic.norm(dim=-1)[mask.bool()]).mean()),
    }  # fmt: skip


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def plot_tsne(embeddings: dict, path: Path, seed: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["aligned_cf", "llm", "fused"]
    stacked = np.concatenate([embeddings[n] for n in names])
    stacked = stacked / np.linalg.norm(stacked, axis=1, keepdims=True)
    points = TSNE(
        n_components=2, init="pca", random_state=seed, perplexity=min(30, len(stacked) - 1)
    ).fit_transform(stacked)
    n = len(embeddings["llm"])
    fig, ax = plt.subplots(figsize=(6, 6))
    for k, label in enumerate(["aligned CF  ALG(x^CF)", "LLM  x^SM", "fused (Eq. 4)"]):
        ax.scatter(*points[k * n : (k + 1) * n].T, s=4, alpha=0.6, label=label)
    ax.set_title(f"t-SNE of {n} items' embeddings")
    ax.legend(markerscale=3)
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def case_study(splits, cf_model, text, gate, text_processor, gate_processor) -> tuple[str, dict]:
    test = splits["test"]
    users, labels = np.array(test["user_id"]), np.array(test["label"])
    positives = np.bincount(users, weights=labels)
    counts = np.bincount(users)
    warm = np.zeros(len(counts), dtype=bool)  # users with train rows: cold users have the zero CF vector
    train_users = np.array(splits["train"]["user_id"])
    warm[train_users[train_users < len(counts)]] = True
    both = (positives > 0) & (positives < counts) & warm
    user = int(np.argmax(np.where(both, counts, 0)))
    rows = np.flatnonzero(users == user)
    items = np.array(test["item_id"])[rows]
    histories = test.data.column("history").take(rows)
    flat, offsets = to_ragged(histories)
    max_history = getattr(cf_model.config, "max_history", 0)
    with torch.no_grad():
        cf_scores = cf_model(
            torch.as_tensor(np.full(len(rows), user)), torch.as_tensor(items),
            torch.as_tensor(latest_items(flat, offsets, max_history)) if max_history else None,
        ).logits.numpy()  # fmt: skip
    scores = {
        "CF": cf_scores,
        "text": score_rows(text, text_processor, np.full(len(rows), user), histories, items),
        "gate": score_rows(gate, gate_processor, np.full(len(rows), user), histories, items),
    }
    ranks = {name: (-s).argsort(kind="stable").argsort() + 1 for name, s in scores.items()}
    user_auc = {name: round(float(roc_auc_score(labels[rows], s)), 4) for name, s in scores.items()}
    last = latest_items(flat, offsets, 10)[-1]
    lines = [
        f"# Case study: test user {user} ({len(rows)} candidates, {int(labels[rows].sum())} clicked)",
        "",
        "Latest history: " + "; ".join(gate_processor.item_titles[i] for i in last if i),
        "",
        "| candidate | clicked | CF rank | text rank | gate rank |",
        "|---|---|---|---|---|",
    ]
    for k in np.argsort(ranks["gate"]):
        lines.append(
            f"| {gate_processor.item_titles[items[k]]} | {'yes' if labels[rows][k] else 'no'} | {ranks['CF'][k]} | "
            f"{ranks['text'][k]} | {ranks['gate'][k]} |"
        )
    lines += ["", "Per-user AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in user_auc.items())]
    return "\n".join(lines) + "\n", {"user": user, "candidates": len(rows), "user_auc": user_auc}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gate_model", default="outputs/reproduce/gate_lightgcn/gate")
    parser.add_argument("--text_model", default="outputs/reproduce/text/text")
    parser.add_argument("--cf_model", default="outputs/reproduce/lightgcn")
    parser.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "demo"])
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/analysis"))
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("gate_model", "text_model", "cf_model"):
        if not Path(getattr(args, name)).is_dir():
            raise SystemExit(
                f"--{name} {getattr(args, name)} is not a folder (run benchmarks/reproduce.py first?)"
            )
    splits = make_demo_log() if args.dataset == "demo" else load_movielens_1m(args.data_dir)
    gate = load_ctr_model(args.gate_model, dtype=torch.float32)
    text = load_ctr_model(args.text_model, dtype=torch.float32)
    cf_model = AutoModel.from_pretrained(args.cf_model).eval()
    gate_processor = CCFLlamaProcessor.from_pretrained(args.gate_model)
    text_processor = CCFLlamaProcessor.from_pretrained(args.text_model)
    if not gate.config.fusion.marks_titles:
        raise SystemExit(
            f"--gate_model {args.gate_model} is a {gate.config.fusion_mode!r} model: it fuses no CF into title tokens"
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)

    known = np.array(sorted(item_titles(splits)))
    chosen = np.sort(
        np.random.default_rng(args.seed).choice(known, min(args.items, len(known)), replace=False)
    )
    embeddings = item_embeddings(gate, gate_processor, chosen)
    plot_tsne(embeddings, args.output_dir / "tsne.png", args.seed)
    markdown, case = case_study(splits, cf_model, text, gate, text_processor, gate_processor)
    (args.output_dir / "case_study.md").write_text(markdown)
    summary = {
        "items": len(chosen),
        "fusion_mode": gate.config.fusion_mode,
        "cosine_fused_llm": round(cosine(embeddings["fused"], embeddings["llm"]), 4),
        "cosine_fused_aligned_cf": round(cosine(embeddings["fused"], embeddings["aligned_cf"]), 4),
        "cosine_llm_aligned_cf": round(cosine(embeddings["llm"], embeddings["aligned_cf"]), 4),
        "cf_part_norm_ratio": round(embeddings["cf_part_norm_ratio"], 4),
        "case_study": case,
    }
    (args.output_dir / "analysis.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output_dir / 'tsne.png'}, {args.output_dir / 'case_study.md'}")


if __name__ == "__main__":
    main()
