"""Pretrain a CF backbone (MF, LightGCN or SASRec) the way CoLLM trained the paper's baselines, with the HF Trainer.

    python examples/pretrain_cf.py --backbone mf --data_dir PATH/TO/ml-1m --output_dir OUT [Trainer args]

BCE-with-logits on all train rows; Adam with L2 weight decay and a constant learning rate; validation AUC/UAUC
after every epoch; the best-validation checkpoint is kept (early stopping after `--patience` epochs without a
better validation AUC) and evaluated once on test. `OUT/all_results.json` holds `eval_auc`, `eval_uauc`,
`test_auc`, `test_uauc`, `best_epoch` and `seconds_to_best_epoch`. `OUT` is a `from_pretrained` folder of the
model: pass it to `run_ctr.py --cf_checkpoints OUT`, or load it and give it to `CCFLlamaForCTR.from_llm(...,
cf_models=[model])`.

Defaults per backbone are CoLLM's tuned settings (`ccf_llm.trainer_collaborative.CF_DEFAULTS`): MF d=256, lr 1e-3,
wd 1e-4; LightGCN d=64, 2 layers, lr 1e-2, wd 1e-4; SASRec d=64, lr 1e-2, wd 1e-2; batch 2048, patience 100.
Trainer arguments on the command line override them. `--data_dir` is an ml-1m folder (downloaded when omitted);
`--dataset amazon_book` reads `Books_5.json.gz` + `meta_Books.json.gz` from it.
"""

import json
import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from ccf_llm.data import load_amazon_book, load_movielens_1m
from ccf_llm.modeling_collaborative import cf_backbone
from ccf_llm.trainer_collaborative import CF_DEFAULTS, TRAINER_DEFAULTS, pretrain_cf


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


def main():
    parser = HfArgumentParser((CFArguments, TrainingArguments))
    backbone = parser.parse_args_into_dataclasses()[0].backbone.lower()  # first pass: whose defaults apply
    cf_backbone(backbone)  # unknown names fail here, with the list of known ones
    # CoLLM's settings first; anything on the command line comes later and wins
    defaults = {**TRAINER_DEFAULTS, **{k: v for k, v in CF_DEFAULTS[backbone].items() if k != "hidden_size"}}
    argv = [
        item
        for key, value in defaults.items()
        for item in (f"--{key}", *map(str, value if isinstance(value, list) else [value]))
    ]
    cf_args, training_args = parser.parse_args_into_dataclasses(args=argv + sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if cf_args.dataset == "amazon_book":
        splits = load_amazon_book(cf_args.data_dir)
    elif cf_args.dataset == "ml-1m":
        splits = load_movielens_1m(cf_args.data_dir)
    else:
        raise ValueError(f"unknown dataset {cf_args.dataset!r}: ml-1m or amazon_book")
    _, results = pretrain_cf(
        backbone,
        splits,
        training_args,
        cf_args.hidden_size,
        cf_args.num_layers,
        cf_args.max_history,
        cf_args.patience,
    )
    with open(f"{training_args.output_dir}/all_results.json", "w") as handle:
        json.dump(results, handle, indent=2)
    keys = ("eval_auc", "eval_uauc", "test_auc", "test_uauc", "best_epoch", "seconds_to_best_epoch")
    print(json.dumps({k: results[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
