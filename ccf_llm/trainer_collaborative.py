# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Pretraining the CF backbones with the Hugging Face Trainer, the way CoLLM trained the paper's baselines.

BCE-with-logits on all train rows; Adam with L2 weight decay on every parameter and a constant learning rate; validation AUC/UAUC
after every epoch; the best-validation checkpoint is kept (early stopping after `patience` epochs without a better
validation AUC) and evaluated once on test. Users and items absent from train get the zero vector (see
`ccf_llm.modeling_collaborative`) and their count is logged.
"""

import logging
import time

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from .data import CTRRows, id_counts, identity_collator
from .metrics import compute_ctr_metrics
from .modeling_collaborative import cf_backbone

logger = logging.getLogger(__name__)

CF_DEFAULTS = {
    "mf": {"hidden_size": 256, "learning_rate": 1e-3, "weight_decay": 1e-4},
    "lightgcn": {"hidden_size": 64, "learning_rate": 1e-2, "weight_decay": 1e-4},
    "sasrec": {"hidden_size": 64, "learning_rate": 1e-2, "weight_decay": 1e-2},
}
"""CoLLM's tuned settings per backbone (``../shared/data/README.md``); batch 2048 and patience 100 for all."""

TRAINER_DEFAULTS = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "load_best_model_at_end": True,
    "metric_for_best_model": "auc",
    "greater_is_better": True,
    "num_train_epochs": 1000,
    "per_device_train_batch_size": 2048,
    "per_device_eval_batch_size": 8192,
    "lr_scheduler_type": "constant",
    "label_names": ["labels", "user_ids"],
    "logging_strategy": "epoch",
    "report_to": "none",
    "use_cpu": True,
    "seed": 2023,
    "remove_unused_columns": False,  # CTRRows yields forward arguments only, as whole batches
}


class EpochClock(TrainerCallback):
    """Wall time of every evaluation, to report the time to the best epoch."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = {}

    def on_evaluate(self, args, state, control, **kwargs):
        self.seconds[state.global_step] = time.perf_counter() - self.start


def pretrain_cf(
    backbone: str,
    splits,
    args: TrainingArguments,
    hidden_size: int | None = None,
    num_layers: int = 2,
    max_history: int = 25,
    patience: int = 100,
):
    """
    Train `backbone` (`mf`, `lightgcn`, `sasrec`) on `splits` (a `DatasetDict` from `ccf_llm.data`).
    Returns `(model, results)`; `results` has `eval_auc`, `eval_uauc`, `test_auc`, `test_uauc`, the
    `learning_rate`, `weight_decay` and `per_device_train_batch_size` it trained with, `best_epoch`,
    `seconds_to_best_epoch`, `train_seconds` (all epochs run), `cold_users`, `cold_items`. The best model's
    per-row scores are written to `args.output_dir/scores_{validation,test}.parquet` (`user_id`, `item_id`,
    `label`, `score`).
    """
    config_class, model_class = cf_backbone(backbone)
    backbone = backbone.lower()
    if len(splits["train"]) == 0:
        raise ValueError("the train split is empty: nothing to pretrain the CF backbone on")
    num_users, num_items = id_counts(splits)
    rows = {
        name: CTRRows(split, max_history if backbone == "sasrec" else 0) for name, split in splits.items()
    }
    extra = {"num_layers": num_layers} if backbone == "lightgcn" else {}
    if backbone == "sasrec":
        extra = {"max_history": max_history}
    torch.manual_seed(args.seed)
    hidden = hidden_size or CF_DEFAULTS[backbone]["hidden_size"]
    model = model_class(config_class(num_users=num_users, num_items=num_items, hidden_size=hidden, **extra))
    train = rows["train"].tensors
    if backbone == "lightgcn":
        positive = train["labels"] > 0
        model.set_graph(train["user_ids"][positive], train["item_ids"][positive])
    cold_users, cold_items = model.zero_cold_rows(train["user_ids"], train["item_ids"])
    logger.info(
        "%d users and %d items never occur in train: their embeddings are the zero vector",
        cold_users,
        cold_items,
    )
    clock = EpochClock()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows["train"],
        eval_dataset=rows["validation"],
        data_collator=identity_collator,
        compute_metrics=compute_ctr_metrics,
        # CoLLM: Adam(model.parameters(), weight_decay=wd), i.e. L2 on every parameter, norms and biases included
        optimizers=(
            torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay),
            None,
        ),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience), clock],
    )
    train_seconds = trainer.train().metrics["train_runtime"]
    best_step = trainer.state.best_global_step
    steps_per_epoch = -(-len(rows["train"]) // args.per_device_train_batch_size)
    results = trainer.evaluate(rows["validation"], metric_key_prefix="eval")
    results.update(trainer.evaluate(rows["test"], metric_key_prefix="test"))
    results.update(
        {
            "backbone": backbone,
            # the settings that decide what the model learns (SASRec's L2 1e-2 zeroes its encoder's matrices)
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "best_epoch": round(best_step / steps_per_epoch) if best_step else None,
            "seconds_to_best_epoch": round(clock.seconds.get(best_step, float("nan")), 1),
            "epochs_run": round(trainer.state.epoch or 0),
            "train_seconds": round(train_seconds, 1),
            "cold_users": cold_users,
            "cold_items": cold_items,
        }
    )
    trainer.save_model()
    if (
        args.should_save
    ):  # per-row scores: intervals and paired tests over users (ccf_llm.metrics.user_bootstrap)
        for name in ("validation", "test"):
            scores = np.asarray(trainer.predict(rows[name]).predictions, dtype=np.float64).reshape(-1)
            splits[name].select_columns(["user_id", "item_id", "label"]).add_column(
                "score", scores.tolist()
            ).to_parquet(f"{args.output_dir}/scores_{name}.parquet")
    return model, results


__all__ = ["CF_DEFAULTS", "TRAINER_DEFAULTS", "pretrain_cf"]
