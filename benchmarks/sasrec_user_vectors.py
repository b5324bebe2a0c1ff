"""What a trained SASRec's user vectors hold on ML-1M: why the LLM rows that read them gain little from the user token.

    python benchmarks/sasrec_user_vectors.py --cf_checkpoint outputs/reproduce_full/sasrec [OTHER ...] \
        --data_dir PATH/TO/ml-1m

SASRec has no user table: its user vector is the last position of a causal Transformer over the row's latest items
(`SASRecEncoder`), and it is what `CCFLlamaForCTR` passes through ALG as the user token of a SASRec source. This
script measures, on the trained model (fp32, eval mode unless said), over the training rows with a history (those
`CCFCollaborativeEncoder.standardization` standardizes over):

* how much the user vectors differ between rows: entry RMS, the mean over dimensions of their spread across rows, and
  the mean cosine between two rows' vectors; the same for rows whose history fills all `max_history` positions
  and for shorter ones;
* what that does to SASRec's own scores: the spread of a fixed item's score across users against the spread of a
  fixed user's score across items, and SASRec's test AUC with every row's own user vector against one mean user
  vector for every row (a fixed item ranking);
* three ways the little that differs could be lost before ALG: an encoder in bf16 (cosine between the bf16 and
  fp32 user vectors of a row, both standardized as `standardize_cf` does), dropout left on (RMS of train-mode minus
  eval-mode vectors, seeded), and rows without a history in the standardization (the RMS scale with and without
  them);
* the item table: entry RMS and the mean cosine between two items' vectors;
* what training left of the weights (CoLLM's recipe, Adam with L2 weight decay 1e-2, drives the encoder's matrices
  to zero; a lighter decay does not): the largest RMS among the encoder's weight matrices (attention and
  feed-forward), its biases, its LayerNorm gains, the position embeddings and the item table (`parameter_groups`).

Several checkpoints (e.g. SASRecs trained with other weight decays) are measured one after the other and compared
in one table, with the settings and AUCs their `all_results.json` (`pretrain_cf.py`) records.

Takes well under a minute per checkpoint on two cores. Writes this CPU kind's entry of
`benchmarks/results/sasrec_user_vectors.{json,md}`.
"""

import argparse
import copy
import json
import re
from pathlib import Path

import numpy as np
import torch
from report import provenance, save_results
from sklearn.metrics import roc_auc_score
from transformers import AutoModel

from ccf_llm.data import CTRRows, load_movielens_1m


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """The mean cosine over all pairs of distinct rows: `(|sum of unit rows|^2 - n) / (n (n - 1))`."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)
    n = len(unit)
    return float((unit.sum(0).pow(2).sum() - n) / (n * (n - 1)))


def spread(vectors: torch.Tensor) -> float:
    """The mean over dimensions of the standard deviation across rows."""
    return float(vectors.double().std(0).mean())


def rms(vectors: torch.Tensor) -> float:
    return float(vectors.double().pow(2).mean().sqrt())


@torch.no_grad()
def encode(model, history: torch.Tensor, dtype=torch.float32, train: bool = False, batch_size: int = 4096):
    """SASRec user vectors of `history` rows, computed in `dtype` (returned in fp32), dropout on with `train`. Another
    dtype or mode runs on a copy: `model` keeps its fp32 weights and eval mode."""
    if dtype != torch.float32 or train:
        model = copy.deepcopy(model).to(dtype).train(train)
    return torch.cat([model.encode_history(h).float() for h in history.split(batch_size)])


PARAMETER_GROUPS = ("encoder weight matrices (attention, feed-forward)", "encoder biases", "LayerNorm gains",
                    "position embeddings", "item table")  # fmt: skip


def parameter_group(name: str) -> str:
    """Which of `PARAMETER_GROUPS` a SASRecModel parameter belongs to, by its name; an unknown name is an error."""
    if name == "item_embeddings.weight":
        return PARAMETER_GROUPS[4]
    if name == "encoder.position_embeddings.weight":
        return PARAMETER_GROUPS[3]
    if re.fullmatch(
        r"encoder\.blocks\.\d+\.(attention\.(in_proj_weight|out_proj\.weight)|ffn\.\d+\.weight)", name
    ):
        return PARAMETER_GROUPS[0]
    if re.fullmatch(r"encoder\.(blocks\.\d+\.(attention_norm|ffn_norm)|final_norm)\.weight", name):
        return PARAMETER_GROUPS[2]
    if re.fullmatch(r"encoder\..*bias", name):
        return PARAMETER_GROUPS[1]
    raise ValueError(
        f"parameter {name!r} is not one of SASRecModel's: which group of {PARAMETER_GROUPS} is it?"
    )


def parameter_groups(model) -> dict[str, dict]:
    """Per group of `PARAMETER_GROUPS`: how many parameter tensors it has and the largest RMS among them."""
    groups = {group: {"tensors": 0, "largest_rms": 0.0} for group in PARAMETER_GROUPS}
    for name, weight in model.named_parameters():
        group = groups[parameter_group(name)]
        group["tensors"] += 1
        group["largest_rms"] = max(group["largest_rms"], rms(weight.detach()))
    return groups


@torch.no_grad()
def user_vector_statistics(
    model, train: CTRRows, test: CTRRows, seed: int = 0, score_rows: int = 2000
) -> dict:
    """Every statistic of the module docstring, for a SASRecModel and its training and test rows (`CTRRows` with
    `max_history` = the model's)."""
    model = model.float().eval()
    history = train.tensors["history"]
    has_history = (history != 0).any(-1)
    full = (history != 0).all(-1)
    users = encode(model, history[has_history])
    mean_user = users.mean(0)
    scale = float((users - mean_user).pow(2).mean().sqrt())
    with_empty = encode(model, history)
    scale_with_empty = float((with_empty - with_empty.mean(0)).pow(2).mean().sqrt())
    full_users, short_users = users[full[has_history]], users[~full[has_history]]

    items = model.item_embeddings.weight[1:].detach().float()
    chosen = torch.from_numpy(
        np.random.default_rng(seed).choice(len(full_users), min(score_rows, len(full_users)), replace=False)
    )
    scores = full_users[chosen] @ items.T  # (users, items)

    test_history, test_items = test.tensors["history"], test.tensors["item_ids"]
    labels = test.tensors["labels"].numpy()
    own = (encode(model, test_history) * model.item_embeddings.weight[test_items].float()).sum(-1)
    fixed = model.item_embeddings.weight[test_items].float() @ mean_user

    standardized = (users - mean_user) / scale
    in_bf16 = (encode(model, history[has_history], dtype=torch.bfloat16) - mean_user) / scale
    torch.manual_seed(seed)
    dropout_noise = encode(model, history[has_history], train=True) - users
    return {
        "train_rows": len(history),
        "rows_with_history": int(has_history.sum()),
        "rows_without_history_share": float(1 - has_history.float().mean()),
        "max_history": int(history.shape[1]),
        "users": {
            "entry_rms": rms(users),
            "spread": spread(users),
            "mean_cosine": mean_pairwise_cosine(users),
            "norm": float(users.norm(dim=-1).mean()),
        },
        "full_history": {
            "rows": len(full_users),
            "spread": spread(full_users),
            "mean_cosine": mean_pairwise_cosine(full_users),
        },
        "short_history": {
            "rows": len(short_users),
            "spread": spread(short_users),
            "mean_cosine": mean_pairwise_cosine(short_users),
        },
        "scores_full_history": {
            "users": len(chosen),
            "spread_across_users": float(scores.double().std(0).mean()),
            "spread_across_items": float(scores.double().std(1).mean()),
        },
        "test_auc_own_user_vector": float(roc_auc_score(labels, own.numpy())),
        "test_auc_one_mean_user_vector": float(roc_auc_score(labels, fixed.numpy())),
        "standardization": {"scale": scale, "scale_with_rows_without_history": scale_with_empty},
        "bf16_encoder_cosine_to_fp32": float(
            torch.nn.functional.cosine_similarity(in_bf16, standardized, dim=-1).mean()
        ),
        "dropout_noise_rms": rms(dropout_noise),
        "items": {"entry_rms": rms(items), "mean_cosine": mean_pairwise_cosine(items)},
        "parameters": parameter_groups(model),
    }


TRAINING_KEYS = ("learning_rate", "weight_decay", "best_epoch", "eval_auc", "test_auc", "test_uauc")


def training_record(checkpoint: Path) -> dict | None:
    """What `pretrain_cf.py` recorded of the checkpoint's training (`TRAINING_KEYS`), None where it recorded nothing;
    settings recorded before `pretrain_cf` kept them are None."""
    path = checkpoint / "all_results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return {key: results.get(key) for key in TRAINING_KEYS}


def render(entry: dict) -> list[str]:
    """All checkpoints of a CPU kind's entry (one for entries written before several were measured): a comparison
    table when there are several, then each checkpoint's statistics."""
    checkpoints = entry.get("checkpoints") or [entry]
    lines = []
    if len(checkpoints) > 1:
        lines += [
            "| SASRec | weight decay | lr | valid AUC | test AUC (own users) | test AUC (one mean user) | user spread "
            "| mean cosine between users | largest encoder-matrix RMS |",
            "|---|---|---|---|---|---|---|---|---|",
            *map(comparison_row, checkpoints),
            "",
            "? where the checkpoint's `all_results.json` does not record it (trained before `pretrain_cf` kept its "
            "settings). Test AUC with one mean user vector: every row scored with the mean of the training rows' "
            "user vectors, i.e. by the item alone.",
        ]
    for c in checkpoints:
        heading = [f"### `{c['cf_checkpoint']}`", ""] if len(checkpoints) > 1 else []
        lines += [*([""] if lines else []), *heading, *render_checkpoint(c)]
    return lines


def comparison_row(checkpoint: dict) -> str:
    """A checkpoint's line of `render`'s comparison table; `?` for a setting its `all_results.json` does not record."""
    training, s = checkpoint.get("training") or {}, checkpoint["statistics"]

    def setting(key, spec="g"):
        return "?" if training.get(key) is None else format(training[key], spec)

    return (
        f"| `{checkpoint['cf_checkpoint']}` | {setting('weight_decay')} | {setting('learning_rate')} | "
        f"{setting('eval_auc', '.4f')} | {s['test_auc_own_user_vector']:.4f} | "
        f"{s['test_auc_one_mean_user_vector']:.4f} | {s['users']['spread']:.3g} | {s['users']['mean_cosine']:.4f} | "
        f"{s['parameters'][PARAMETER_GROUPS[0]]['largest_rms']:.2e} |"
    )


def render_checkpoint(entry: dict) -> list[str]:
    s = entry["statistics"]
    u, f, h, sc = s["users"], s["full_history"], s["short_history"], s["scores_full_history"]
    st = s["standardization"]
    return [
        f"SASRec `{entry['cf_checkpoint']}`, fp32, eval mode; {s['rows_with_history']:,} of {s['train_rows']:,} "
        f"training rows have a history ({s['rows_without_history_share']:.1%} have none); `max_history` "
        f"{s['max_history']}. Spread: the mean over dimensions of the standard deviation across rows.",
        "",
        "| user vectors over | rows | spread | mean cosine between rows |",
        "|---|---|---|---|",
        f"| training rows with a history (entry RMS {u['entry_rms']:.3g}, norm {u['norm']:.3g}) | "
        f"{s['rows_with_history']:,} | {u['spread']:.3g} | {u['mean_cosine']:.4f} |",
        f"| full history ({s['max_history']} items) | {f['rows']:,} | {f['spread']:.3g} | {f['mean_cosine']:.4f} |",
        f"| shorter history | {h['rows']:,} | {h['spread']:.3g} | {h['mean_cosine']:.4f} |",
        "",
        f"SASRec's own scores for {sc['users']:,} full-history rows against every item: spread across users "
        f"{sc['spread_across_users']:.3g} per item, across items {sc['spread_across_items']:.3g} per user. Test AUC "
        f"with each row's own user vector {s['test_auc_own_user_vector']:.4f}, with one mean user vector for every "
        f"row {s['test_auc_one_mean_user_vector']:.4f}.",
        "",
        f"Before ALG: standardized (minus the mean, divided by the RMS around it, {st['scale']:.3g} over rows with a "
        f"history, {st['scale_with_rows_without_history']:.3g} with the rows without one), a bf16 encoder's user "
        f"vectors have a mean cosine of {s['bf16_encoder_cosine_to_fp32']:.3f} with fp32's; dropout left on adds "
        f"noise of RMS {s['dropout_noise_rms']:.3g} (spread between users: {u['spread']:.3g}).",
        "",
        f"Item table: entry RMS {s['items']['entry_rms']:.3g}, mean cosine between items "
        f"{s['items']['mean_cosine']:.4f}.",
        *(
            [
                "",
                "What training left of the weights (RMS of each parameter tensor; initialized at PyTorch's defaults "
                "and N(0, 1) embeddings):",
                "",
                "| parameters | tensors | largest RMS |",
                "|---|---|---|",
                *(f"| {k} | {v['tensors']} | {v['largest_rms']:.2e} |" for k, v in s["parameters"].items()),
            ]
            if "parameters" in s
            else []
        ),
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cf_checkpoint", type=Path, nargs="+", required=True, help="trained SASRecs (pretrain_cf.py)"
    )
    parser.add_argument("--data_dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splits = load_movielens_1m(args.data_dir)
    checkpoints = []
    for checkpoint in args.cf_checkpoint:
        model = AutoModel.from_pretrained(checkpoint)
        if not hasattr(model, "encode_history"):
            raise ValueError(f"{checkpoint} holds a {type(model).__name__}, not a SASRec model")
        rows = {
            name: CTRRows(splits[name], max_history=model.config.max_history) for name in ("train", "test")
        }
        checkpoints.append({
            "cf_checkpoint": str(checkpoint),
            "training": training_record(checkpoint),
            "statistics": user_vector_statistics(model, rows["train"], rows["test"], seed=args.seed),
        })  # fmt: skip
    entry = {
        "provenance": provenance("float32 (and bfloat16 for the encoder-in-bf16 check)"),
        "checkpoints": checkpoints,
    }
    print(
        "\n".join(
            save_results("sasrec_user_vectors", entry, render, "What SASRec's user vectors hold on ML-1M")
        )
    )


if __name__ == "__main__":
    main()
