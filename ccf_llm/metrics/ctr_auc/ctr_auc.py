# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""CTR AUC metrics as a local `evaluate` module (Hub metrics cannot load offline).

* `auc`: scikit-learn's `roc_auc_score` over all rows.
* `uauc`: the plain mean of per-user AUCs over users with at least 2 rows and both labels (CoLLM's UAUC; users
  with one row or one class are skipped explicitly, since scikit-learn 1.9 returns NaN for them instead of
  raising). Per-user AUCs come from within-user average ranks (Mann–Whitney U), all users at once.

Load with `evaluate.load(path_to_this_folder)` or `ccf_llm.metrics.load_ctr_metric()`. This file imports no
package-relative module, because `evaluate` copies it into its own module cache.
"""

import datasets
import evaluate
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def per_user_auc(scores, labels, users) -> pd.Series:
    """AUC of each eligible user (>= 2 rows, both labels), indexed by user id."""
    frame = pd.DataFrame({"score": np.asarray(scores, dtype=np.float64), "label": np.asarray(labels).astype(np.int64),
                          "user": np.asarray(users)})  # fmt: skip
    grouped = frame.groupby("user")
    n_pos = grouped["label"].transform("sum")
    n = grouped["label"].transform("size")
    frame["rank"] = grouped["score"].rank(method="average")
    eligible = (n_pos > 0) & (n_pos < n)
    frame = frame[eligible].assign(n_pos=n_pos[eligible], n_neg=(n - n_pos)[eligible])
    positives = frame[frame["label"] == 1].groupby("user")
    rank_sum = positives["rank"].sum()
    p = positives["n_pos"].first()
    q = positives["n_neg"].first()
    return (rank_sum - p * (p + 1) / 2) / (p * q)


def uauc(scores, labels, users) -> float:
    """Mean per-user AUC over users with at least 2 rows and both labels; NaN if there is none."""
    values = per_user_auc(scores, labels, users)
    return float(values.mean()) if len(values) else float("nan")


def rela_impr(auc: float, base_auc: float) -> float:
    """Eq. 6 of CCF-LLM (RelaImpr, Yan et al.): ((AUC - 0.5) / (AUC_base - 0.5) - 1) x 100%."""
    return ((auc - 0.5) / (base_auc - 0.5) - 1.0) * 100.0


class CtrAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="AUC and UAUC (mean per-user AUC over users with >= 2 rows and both labels) for CTR.",
            citation="Liu et al., Collaborative Cross-modal Fusion with LLM for Recommendation, CIKM 2024.",
            inputs_description="predictions: click scores; references: 0/1 labels; users: user ids (for UAUC).",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    "references": datasets.Value("int64"),
                    "users": datasets.Value("int64"),
                }  # fmt: skip
            ),
        )

    def _compute(self, predictions, references, users):
        references = np.asarray(references)
        auc = (
            float(roc_auc_score(references, predictions)) if len(np.unique(references)) == 2 else float("nan")
        )
        return {"auc": auc, "uauc": uauc(predictions, references, users)}
