"""Pretrain a CF backbone (MF, LightGCN or SASRec) the way CoLLM trained the paper's baselines, with the HF Trainer.

    python examples/pretrain_cf.py --backbone mf --data_dir PATH/TO/ml-1m --output_dir OUT [Trainer args]

BCE-with-logits on all train rows; Adam with L2 weight decay and a constant learning rate; validation AUC/UAUC
after every epoch; the best-validation checkpoint is kept (early stopping after `--patience` epochs without a
better validation AUC) and evaluated once on test. `OUT/all_results.json` holds `eval_auc`, `eval_uauc`,
`test_auc`, `test_uauc`, `best_epoch` and `seconds_to_best_epoch`; `OUT` is a `from_pretrained` folder of the model,
and `OUT/cf_embeddings.safetensors` holds the user and item tables `CCFLlamaForCTR.from_llm` loads (SASRec: the
item table; its users are encoded per row from the history).

Defaults per backbone are CoLLM's tuned settings (`../shared/data/README.md`): MF d=256, lr 1e-3, wd 1e-4;
LightGCN d=64, 2 layers, lr 1e-2, wd 1e-4; SASRec d=64, lr 1e-2, wd 1e-2; batch 2048, patience 100. Any Trainer
argument given on the command line overrides them. `--data_dir` takes an ml-1m folder; `--dataset amazon_book`
reads `Books_5.json.gz` + `meta_Books.json.gz` from it.
"""

import json
import logging
import sys
import time
from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file
from transformers import EarlyStoppingCallback, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from ccf_llm.data import CTRRows, identity_collator, load_amazon_book, load_movielens_1m
from ccf_llm.metrics import compute_ctr_metrics
from ccf_llm.modeling_collaborative import cf_backbone

logger = logging.getLogger("pretrain_cf")

DEFAULTS = {
    "mf": {"hidden_size": 256, "learning_rate": 1e-3, "weight_decay": 1e-4},
    "lightgcn": {"hidden_size": 64, "learning_rate": 1e-2, "weight_decay": 1e-4},
    "sasrec": {"hidden_size": 64, "learning_rate": 1e-2, "weight_decay": 1e-2},
}


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
    "label_names": "labels user_ids",
    "logging_strategy": "epoch",
    "report_to": "none",
    "use_cpu": True,
    "seed": 2023,
    "remove_unused_columns": False,  # CTRRows yields forward arguments only, as whole batches
}


@dataclass
class CFArguments:
    backbone: str = field(metadata={"help": "mf, lightgcn or sasrec"})
    data_dir: str | None = field(
        default=None, metadata={"help": "dataset folder (ml-1m: downloaded when omitted)"}
    )
    dataset: str = field(default="ml-1m", metadata={"help": "ml-1m or amazon_book"})
    hidden_size: int | None = field(
        default=None, metadata={"help": "embedding size l (default: per backbone)"}
    )
    num_layers: int = field(default=2, metadata={"help": "LightGCN layers"})
    max_history: int = field(default=25, metadata={"help": "SASRec: the row's latest history items"})
    patience: int = field(
        default=100, metadata={"help": "epochs without a better validation AUC before stopping"}
    )


class EpochClock(TrainerCallback):
    """Wall time of every evaluation, to report the time to the best epoch."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = {}

    def on_evaluate(self, args, state, control, **kwargs):
        self.seconds[state.global_step] = time.perf_counter() - self.start


def main():
    parser = HfArgumentParser((CFArguments, TrainingArguments))
    backbone = parser.parse_args_into_dataclasses()[0].backbone  # first pass: which backbone's defaults
    config_class, model_class = cf_backbone(backbone)
    # CoLLM's settings first; anything on the command line comes later and wins
    defaults = {
        **TRAINER_DEFAULTS,
        **{k: v for k, v in DEFAULTS[backbone.lower()].items() if k != "hidden_size"},
    }
    argv = [item for key, value in defaults.items() for item in (f"--{key}", *str(value).split())]
    cf_args, training_args = parser.parse_args_into_dataclasses(args=argv + sys.argv[1:])
    backbone = backbone.lower()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if cf_args.dataset == "amazon_book":
        splits = load_amazon_book(cf_args.data_dir)
    else:
        splits = load_movielens_1m(cf_args.data_dir)
    if len(splits["train"]) == 0:
        raise ValueError("the train split is empty")
    everything = [splits[s] for s in splits]
    num_users = max(max(s["user_id"]) for s in everything)
    num_items = max(max(s["item_id"]) for s in everything)
    max_history = cf_args.max_history if backbone == "sasrec" else 0
    rows = {name: CTRRows(split, max_history) for name, split in splits.items()}

    hidden = cf_args.hidden_size or DEFAULTS[backbone]["hidden_size"]
    extra = {"num_layers": cf_args.num_layers} if backbone == "lightgcn" else {}
    if backbone == "sasrec":
        extra = {"max_history": cf_args.max_history}
    torch.manual_seed(training_args.seed)
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
        args=training_args,
        train_dataset=rows["train"],
        eval_dataset=rows["validation"],
        data_collator=identity_collator,
        compute_metrics=compute_ctr_metrics,
        optimizer_cls_and_kwargs=(torch.optim.Adam, {}),  # Adam with L2 weight decay, as CoLLM
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cf_args.patience), clock],
    )
    trainer.train()
    best_step = trainer.state.best_global_step
    steps_per_epoch = -(-len(rows["train"]) // training_args.per_device_train_batch_size)
    results = trainer.evaluate(rows["validation"], metric_key_prefix="eval")
    results.update(trainer.evaluate(rows["test"], metric_key_prefix="test"))
    results.update(
        {
            "backbone": backbone,
            "best_epoch": round(best_step / steps_per_epoch) if best_step else None,
            "seconds_to_best_epoch": round(clock.seconds.get(best_step, float("nan")), 1),
            "epochs_run": round(trainer.state.epoch or 0),
            "cold_users": cold_users,
            "cold_items": cold_items,
        }
    )
    trainer.save_model()
    if backbone == "sasrec":
        tables = {"item_embeddings": model.item_embeddings.weight.detach().contiguous()}
    else:
        users, items = model.export_cf_embeddings()
        tables = {"user_embeddings": users.contiguous(), "item_embeddings": items.contiguous()}
    save_file(
        tables, f"{training_args.output_dir}/cf_embeddings.safetensors", metadata={"backbone": backbone}
    )
    trainer.save_metrics("all", results, combined=False)
    print(json.dumps({k: results[k] for k in ("eval_auc", "eval_uauc", "test_auc", "test_uauc", "best_epoch",
                                               "seconds_to_best_epoch")}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
