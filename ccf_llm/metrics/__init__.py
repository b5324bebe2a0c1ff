# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""CTR metrics: AUC, UAUC and RelaImpr (Eq. 6), also as a local `evaluate` module that works offline, and their
confidence intervals and paired tests (`user_bootstrap`, a bootstrap over users; `seeds_interval`, the spread between
seeds)."""

from pathlib import Path

from .ctr_auc.ctr_auc import per_user_auc, rela_impr, uauc
from .intervals import seeds_interval, user_bootstrap

CTR_AUC_PATH = str(Path(__file__).resolve().parent / "ctr_auc")


def load_ctr_metric(**kwargs):
    """`evaluate.load` of the packaged `ctr_auc` metric (AUC + UAUC); no network needed."""
    import evaluate

    return evaluate.load(CTR_AUC_PATH, **kwargs)


_METRIC = None


def compute_ctr_metrics(eval_pred) -> dict:
    """
    `Trainer(compute_metrics=...)` for CTR models: predictions are click scores or logits (AUC and UAUC depend only
    on their order); `label_ids` is `(labels, user_ids)`, which the Trainer gives with
    `label_names=["labels", "user_ids"]`. Returns `auc` and `uauc` from the packaged `evaluate` module.
    """
    global _METRIC
    if _METRIC is None:
        _METRIC = load_ctr_metric()
    predictions = eval_pred.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    labels, users = eval_pred.label_ids
    return _METRIC.compute(
        predictions=predictions.reshape(-1), references=labels.reshape(-1), users=users.reshape(-1)
    )


__all__ = [
    "compute_ctr_metrics",
    "CTR_AUC_PATH",
    "load_ctr_metric",
    "per_user_auc",
    "rela_impr",
    "seeds_interval",
    "uauc",
    "user_bootstrap",
]
