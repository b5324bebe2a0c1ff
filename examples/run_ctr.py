"""Train and evaluate CCF-LLM for CTR prediction: data → CF backbone → hybrid prompts → two-stage training → AUC.

    python examples/run_ctr.py examples/configs/demo.json                 # the offline demo (synthetic log)
    python examples/run_ctr.py CONFIG.json --learning_rate 5e-4           # a JSON config plus overrides
    python examples/run_ctr.py --dataset ml-1m --data_dir PATH --cf_checkpoints OUT/cf_lightgcn \\
        --fusion_modes gate --output_dir OUT/ccf [any Trainer / CCFTrainingArguments flag]

For each fusion mode in `--fusion_modes` (`gate`, `token_gate`, `add`, `inject`, `text`): build `CCFLlamaForCTR`
from the backbone LLM (default SmolLM2-135M-Instruct, found offline as `ccf_llm.pretrained_llm` describes) and
the CF backbone(s) (`--cf_checkpoints` from `examples/pretrain_cf.py`, several for Eq. 7; without one, a
`--cf_backbone` is pretrained on the train split first), wrap it with LoRA, and run the schedule:
`lora+fusion` (§3.4: LoRA, then ALG + GATE with a fresh optimizer), `lora` or `end_to_end` (Table 4). `text`
mode has no fusion weights, so its schedule is stage 1 alone. Validation and test AUC/UAUC (full prompts
scored with the shared-prefix cache, `ccf_llm.score_rows`; `--score_test false` leaves the test set unread) are
written to
`OUTPUT_DIR/<mode>/all_results.json` and, for the last mode, `OUTPUT_DIR/all_results.json` (keys `test_auc`,
`test_uauc`, ...). Each finished stage saves its adapter in `OUTPUT_DIR/<mode>/stage_<n>_<stage>/final`; with
`--resume_from_checkpoint true` a rerun skips finished stages and resumes an unfinished one from its last checkpoint
(`--save_strategy steps`), giving the same weights as an uninterrupted run with the same seed. `OUTPUT_DIR/<mode>` then holds the adapter (LoRA + ALG/GATE), the processor, the base model
(at its root) and a model card rendered from `model_cards/ccf_llama_card.md`; `--push_to_hub` uploads that folder.
"""

import dataclasses
import json
import logging
import os
import sys
import time
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.distributed.fsdp import register_fsdp_forward_method
from transformers import AutoModel, HfArgumentParser, TrainingArguments, set_seed
from transformers.hf_argparser import string_to_bool

from ccf_llm import (
    DEFAULT_LLM,
    FUSION_MODE_TABLE,
    FUSION_MODES,
    CCFDataCollator,
    CCFLlamaForCTR,
    CCFLlamaProcessor,
    load_llm,
    score_rows,
    score_rows_distributed,
)
from ccf_llm.data import (
    COLD_RULES,
    id_counts,
    item_titles,
    load_amazon_book,
    load_interactions,
    load_movielens_1m,
    seeded_indices,
    seeded_subsample,
    warm_cold_masks,
)
from ccf_llm.metrics import load_ctr_metric, rela_impr
from ccf_llm.model_card import render_model_card
from ccf_llm.synthetic import make_demo_log
from ccf_llm.trainer_ccf_llama import (
    CCFTrainingArguments,
    CCFTwoStageTrainer,
    is_fsdp_sharded,
    save_adapter,
    schedule_stages,
)
from ccf_llm.trainer_collaborative import CF_DEFAULTS, TRAINER_DEFAULTS, pretrain_cf

logger = logging.getLogger("run_ctr")


@dataclass
class ModelArguments:
    llm: str = field(default=DEFAULT_LLM, metadata={"help": "backbone LLM: Hub id or local folder"})
    fusion_modes: list[str] = field(
        default_factory=lambda: ["gate"], metadata={"help": f"any of {FUSION_MODES}"}
    )
    cf_checkpoints: list[str] = field(
        default_factory=list, metadata={"help": "CF model folders (pretrain_cf.py)"}
    )
    cf_backbone: str = field(
        default="lightgcn", metadata={"help": "CF backbone pretrained when no checkpoint"}
    )
    cf_hidden_size: int | None = field(default=None, metadata={"help": "its embedding size"})
    cf_epochs: int = field(
        default=300, metadata={"help": "its maximum epochs (early stopping on validation AUC)"}
    )
    cf_learning_rate: float | None = field(
        default=None, metadata={"help": "its learning rate (default: CoLLM's)"}
    )
    cf_batch_size: int = field(default=2048, metadata={"help": "its batch size"})
    zero_init_gate: bool = field(
        default=True, metadata={"help": "zero GATE outputs at init (α = 0: pure text)"}
    )
    gate_init_alpha: float = field(
        default=0.0,
        metadata={
            "help": "α at init with zero_init_gate (0: stage 1 sees pure text titles; 1: the add fusion)"
        },
    )
    standardize_cf: bool = field(
        default=False,
        metadata={
            "help": "center and scale ALG's CF inputs: the mean and RMS of each CF table, of SASRec's user vectors over "
            "the training rows (config.cf_input_shifts, cf_input_scales)"
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "weights dtype: auto (bf16 where the CPU/GPU runs it natively: AMX, AVX512-BF16, CUDA with bf16; "
            "fp32 elsewhere), float32 or bfloat16"
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "the LLM's attention implementation, passed to from_pretrained (default: transformers', SDPA)"
        },
    )
    yes_token: str = field(default=" Yes", metadata={"help": "the positive answer as it follows '#Answer:'"})
    no_token: str = field(default=" No", metadata={"help": "the negative answer"})
    shared_stage1: str | None = field(
        default=None,
        metadata={
            "help": "a finished stage-1 adapter folder (OUT/<mode>/stage_1_lora/final of another run) to start from "
            "instead of training stage 1: e.g. the text row's LoRA for CoLLM-style inject rows"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "reuse an output folder of another run"}
    )


@dataclass
class DataArguments:
    dataset: str = field(default="ml-1m", metadata={"help": "ml-1m, amazon_book, interactions or demo"})
    data_dir: str | None = field(
        default=None, metadata={"help": "dataset folder (ml-1m: downloaded when omitted)"}
    )
    interactions: str | None = field(default=None, metadata={"help": "interactions: CSV/parquet log"})
    items: str | None = field(default=None, metadata={"help": "interactions: CSV/parquet item titles"})
    valid_start: str | None = field(default=None, metadata={"help": "interactions: first validation time"})
    test_start: str | None = field(default=None, metadata={"help": "interactions: first test time"})
    threshold: float = field(default=3.0, metadata={"help": "interactions: label = rating > threshold"})
    template: str | None = field(
        default=None, metadata={"help": "hybrid prompt template (default: the paper's)"}
    )
    text_template: str | None = field(
        default=None, metadata={"help": "template of text mode (no {user} slot)"}
    )
    history_size: int = field(default=10, metadata={"help": "history items shown in the prompt"})
    max_length: int = field(default=700, metadata={"help": "maximum prompt tokens"})
    train_rows_per_stage: int | None = field(
        default=None, metadata={"help": "seeded subsample of train per stage"}
    )
    eval_rows: int | None = field(default=None, metadata={"help": "seeded subsample of validation and test"})
    early_stopping_rows: int = field(
        default=2000,
        metadata={
            "help": "seeded validation subsample evaluated every eval_steps for early stopping and checkpoint choice "
            "(with --eval_strategy steps and --early_stopping_patience)"
        },
    )
    score_test: bool = field(
        default=True, metadata={"help": "score the test split; false while choosing settings on validation"}
    )
    table_note: str | None = field(
        default=None,
        metadata={"help": "a line printed under the results table (what the table does not show)"},
    )
    cold_rule: str = field(
        default="user_and_item",
        metadata={"help": "test rows the table's cold column counts (ccf_llm.data.warm_cold_masks): "
                  + "; ".join(f"{rule}: {meaning}" for rule, meaning in COLD_RULES.items())},
    )  # fmt: skip


def load_splits(data: DataArguments):
    if data.dataset == "demo":
        return make_demo_log()
    if data.dataset == "ml-1m":
        return load_movielens_1m(data.data_dir)
    if data.dataset == "amazon_book":
        return load_amazon_book(data.data_dir)
    if data.dataset == "interactions":
        return load_interactions(data.interactions, data.items, valid_start=data.valid_start,
                                 test_start=data.test_start, threshold=data.threshold)  # fmt: skip
    raise ValueError(f"unknown dataset {data.dataset!r}: ml-1m, amazon_book, interactions or demo")


def cf_models_for(
    model_args: ModelArguments, splits, args: CCFTrainingArguments, num_users: int, num_items: int
):
    """Load the CF checkpoints, or pretrain `cf_backbone` on the train split (once) into OUTPUT_DIR/cf_<name>."""
    if model_args.cf_checkpoints:
        models = [AutoModel.from_pretrained(path) for path in model_args.cf_checkpoints]
    else:
        name = model_args.cf_backbone
        folder = Path(args.output_dir) / f"cf_{name}"
        if (folder / "config.json").is_file():
            models = [AutoModel.from_pretrained(folder)]
        elif args.world_size > 1:
            raise ValueError(
                "a distributed run needs a pretrained CF backbone: run examples/pretrain_cf.py (or this script on one "
                f"process) first and pass --cf_checkpoints, or leave it in {folder}"
            )
        else:
            cf_args = TrainingArguments(
                output_dir=str(folder),
                **{**TRAINER_DEFAULTS, "num_train_epochs": model_args.cf_epochs, "disable_tqdm": True,
                   "logging_strategy": "no", "per_device_train_batch_size": model_args.cf_batch_size,
                   "learning_rate": model_args.cf_learning_rate or CF_DEFAULTS[name]["learning_rate"],
                   "weight_decay": CF_DEFAULTS[name]["weight_decay"], "seed": args.seed},
            )  # fmt: skip
            model, results = pretrain_cf(name, splits, cf_args, model_args.cf_hidden_size, patience=30)
            logger.info(
                "pretrained %s: test AUC %.4f, UAUC %.4f", name, results["test_auc"], results["test_uauc"]
            )
            (folder / "all_results.json").write_text(json.dumps(results, indent=2))
            models = [model]
    for path, model in zip(model_args.cf_checkpoints or [model_args.cf_backbone], models, strict=True):
        if (model.config.num_users, model.config.num_items) != (num_users, num_items):
            raise ValueError(
                f"CF checkpoint {path} has {model.config.num_users} users / {model.config.num_items} items, but the "
                f"dataset has {num_users} / {num_items}: it was trained on other data"
            )
    return models


def resume_flag(value: str | None) -> bool:
    """`--resume_from_checkpoint`: true or false, since each stage resumes from its own folder's last checkpoint."""
    try:
        return value is not None and string_to_bool(value)
    except ArgumentTypeError:
        raise ValueError(
            f"--resume_from_checkpoint takes true or false here (each stage resumes from the last checkpoint in its "
            f"own folder under --output_dir), got {value!r}"
        ) from None


def check_output_dir(output_dir: Path, overwrite: bool):
    """Refuse an output folder that holds another model's results unless told to overwrite it."""
    marker = output_dir / "run_ctr.json"
    if output_dir.is_dir() and any(output_dir.iterdir()) and not marker.is_file() and not overwrite:
        raise ValueError(
            f"{output_dir} already holds files that run_ctr.py did not write (another model's checkpoint?); "
            "choose another --output_dir or pass --overwrite_output_dir"
        )


def run_mode(mode, model_args, data_args, args, splits, titles, cf_models, num_users, num_items) -> dict:
    out = Path(args.output_dir) / mode
    llm, tokenizer = load_llm(
        model_args.llm, dtype=model_args.dtype, attn_implementation=model_args.attn_implementation
    )
    set_seed(args.seed)  # ALG / GATE initialization
    uses_cf = FUSION_MODE_TABLE[mode].uses_cf
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, num_users, num_items, cf_models=cf_models if uses_cf else None,
        fusion_mode=mode, zero_init_gate=model_args.zero_init_gate, gate_init_alpha=model_args.gate_init_alpha,
        yes_token=model_args.yes_token, no_token=model_args.no_token,
    )  # fmt: skip
    processor = CCFLlamaProcessor(  # the fusion mode and cf_history_size come from the model's config
        tokenizer, titles, config=model.config, template=data_args.template if uses_cf else data_args.text_template,
        history_size=data_args.history_size, max_length=data_args.max_length,
    )  # fmt: skip
    if (
        model_args.standardize_cf and model.config.uses_cf
    ):  # ALG's inputs centered and scaled (SASRec: per row)
        history = splits["train"].data.column("history") if model.config.max_cf_history else None
        model.fit_cf_standardization(None if history is None else processor.cf_history(history))
    if args.should_save:
        model.save_pretrained(out)  # the adapter's base: LLM with placeholder rows + CF tables
        model.name_or_path = str(out)  # the adapters name it as their base (a local folder: no Hub lookup)
    evaluation = {
        "validation": processor.process_dataset(
            seeded_subsample(splits["validation"], data_args.eval_rows, args.seed)
        )
    }
    if data_args.score_test:
        evaluation["test"] = processor.process_dataset(
            seeded_subsample(splits["test"], data_args.eval_rows, args.seed + 1)
        )
    stages = schedule_stages(args.schedule, model.config.uses_cf)
    trainer = CCFTwoStageTrainer(
        model, dataclasses.replace(args, output_dir=str(out)), data_collator=CCFDataCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        train_dataset={stage: processor.process_dataset(
            seeded_subsample(splits["train"], data_args.train_rows_per_stage, args.seed + 10 + number)
        ) for number, stage in enumerate(stages)},
        eval_dataset=processor.process_dataset(
            seeded_subsample(splits["validation"], data_args.early_stopping_rows, args.seed + 2)
        ) if args.eval_strategy != "no" else None,
        shared_stages={"lora": model_args.shared_stage1} if model_args.shared_stage1 else None,
    )  # fmt: skip
    stage_log = trainer.train(resume_from_checkpoint=resume_flag(args.resume_from_checkpoint))
    peft_model = trainer.model
    timings = {
        f"stage_{number + 1}_{record['stage']}_seconds": record["seconds"]
        for number, record in enumerate(stage_log)
        if "seconds" in record
    }
    start = time.perf_counter()
    results = {}
    peft_model.eval()
    score = score_rows_distributed  # DDP: each process scores a share of the users; one process: all rows
    if is_fsdp_sharded(peft_model):
        # FSDP: every process scores every row in step with the others, each forward all-gathering its weights
        register_fsdp_forward_method(peft_model, "score_candidates")
        score = score_rows
    else:
        # LoRA folded into the weights for scoring (as the pipeline serves it): no adapter matmuls per layer. It stays
        # merged (PEFT records it): unmerging a bf16 model would round its base weights.
        peft_model.merge_adapter()
    for (
        split,
        dataset,
    ) in evaluation.items():  # prefix-cached scoring (ccf_llm.score_rows), metrics via evaluate
        prefix = "eval" if split == "validation" else "test"
        scores = score(peft_model, processor, dataset["user_id"], dataset.data.column("history"),
                       dataset["item_id"], batch_size=args.per_device_eval_batch_size)  # fmt: skip
        metrics = load_ctr_metric().compute(
            predictions=scores, references=dataset["label"], users=dataset["user_id"]
        )
        results.update({f"{prefix}_{name}": value for name, value in metrics.items()})
        if (
            args.should_save
        ):  # per-row scores: intervals and paired tests over users (ccf_llm.metrics.user_bootstrap)
            dataset.select_columns(["user_id", "item_id", "label"]).add_column(
                "score", scores.tolist()
            ).to_parquet(out / f"scores_{split}.parquet")
    timings["evaluation_seconds"] = round(time.perf_counter() - start, 1)
    results.update(timings)
    results.update({"fusion_mode": mode, "schedule": "+".join(stages), "stages": stage_log,
                    "train_rows_per_stage": len(trainer.train_dataset[stages[0]]),
                    "eval_rows": len(evaluation["validation"]), "test_rows": len(evaluation.get("test", ()))})  # fmt: skip
    save_adapter(peft_model, out / "adapter", args.should_save)  # under FSDP: gathered from every process
    if args.should_save:  # rank 0 of a distributed run
        processor.save_pretrained(out)
        (out / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, CCFTrainingArguments))
    config = None  # a JSON config's contents, kept in run_ctr.json
    if len(sys.argv) > 1 and sys.argv[1].endswith(".json"):
        # a JSON config, then command-line overrides
        config = json.loads(Path(sys.argv[1]).read_text())
        argv = [
            item
            for key, value in config.items()
            for item in (f"--{key}", *map(str, value if isinstance(value, list) else [value]))
        ]
        model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv + sys.argv[2:])
    else:
        model_args, data_args, args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    resume_flag(args.resume_from_checkpoint)  # a bad value fails here, before anything trains
    for mode in model_args.fusion_modes:
        if mode not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {mode!r}; choose from {FUSION_MODES}")
    if args.push_to_hub and not (args.hub_token or os.environ.get("HF_TOKEN") or _stored_token()):
        raise ValueError(
            "--push_to_hub needs a Hugging Face token: pass --hub_token, set HF_TOKEN or run `hf auth login`"
        )
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, model_args.overwrite_output_dir)
    with args.main_process_first(desc="output folder"):
        if args.should_save:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "all_results.json").unlink(missing_ok=True)  # an earlier run's finished marker
            # what a rerun into this folder is compared with
            record = {"argv": sys.argv[1:], "config": config}
            (output_dir / "run_ctr.json").write_text(json.dumps(record, indent=2) + "\n")

    logger.info("process %d of %d (%s)", args.process_index, args.world_size, args.parallel_mode.value)
    splits = load_splits(data_args)
    titles = item_titles(splits)
    num_users, num_items = id_counts(splits)
    needs_cf = any(FUSION_MODE_TABLE[mode].uses_cf for mode in model_args.fusion_modes)
    cf_models = cf_models_for(model_args, splits, args, num_users, num_items) if needs_cf else None
    cf_results = {}
    cf_file = output_dir / f"cf_{model_args.cf_backbone}" / "all_results.json"
    if cf_file.is_file() and not model_args.cf_checkpoints:
        cf_results = json.loads(cf_file.read_text())

    by_mode = {}
    for mode in model_args.fusion_modes:
        by_mode[mode] = run_mode(
            mode, model_args, data_args, args, splits, titles, cf_models, num_users, num_items
        )
        card = render_model_card(by_mode[mode], model_args.llm, data_args.dataset, cf_results,
                                 cf_names=[m.config.model_type for m in cf_models] if cf_models and FUSION_MODE_TABLE[mode].uses_cf else [])  # fmt: skip
        if not args.should_save:
            continue
        card.save(output_dir / mode / "README.md")
        if args.push_to_hub:
            from huggingface_hub import HfApi

            repo = args.hub_model_id or output_dir.name
            repo = f"{repo}-{mode}" if len(model_args.fusion_modes) > 1 else repo
            api = HfApi(token=args.hub_token)
            api.create_repo(repo, exist_ok=True, private=args.hub_private_repo)
            api.upload_folder(repo_id=repo, folder_path=output_dir / mode, ignore_patterns=["stage_*/**"])
            logger.info("pushed %s to %s", output_dir / mode, repo)

    if not args.should_save:
        return
    last = by_mode[model_args.fusion_modes[-1]]
    summary = {**last, "by_mode": by_mode}
    if cf_results and data_args.score_test:
        summary["cf_test_auc"] = cf_results.get("test_auc")
        for res in by_mode.values():
            res["test_rela_impr_vs_cf"] = round(rela_impr(res["test_auc"], cf_results["test_auc"]), 2)
    split_rows = {}
    if data_args.score_test:  # test AUC on the warm and cold rows, where each modality is expected to win
        folders = {mode: output_dir / mode for mode in by_mode} | (
            {"cf": cf_file.parent} if cf_results else {}
        )
        # the LLM modes scored a seeded subsample of the test split, the CF model all of it
        llm_rows = seeded_indices(len(splits["test"]), data_args.eval_rows, args.seed + 1)
        split_aucs, split_rows = warm_cold_aucs(
            folders, splits["train"], data_args.cold_rule, llm_rows, len(splits["test"])
        )
        for name, aucs in split_aucs.items():
            (cf_results if name == "cf" else by_mode[name]).update(aucs)
        summary |= {"cold_rule": data_args.cold_rule, "warm_cold_rows": split_rows}
        summary |= {f"cf_{k}": v for k, v in split_aucs.get("cf", {}).items()}
    (output_dir / "all_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    warm, cold = (f"{k} ({split_rows.get(k, 0)})" for k in ("warm", "cold"))
    print(
        f"\n{'mode':<11} {'valid AUC':>9} {'test AUC':>9} {'test UAUC':>9} {warm:>12} {cold:>12} {'train s':>8}"
    )
    rows = ([("CF (" + model_args.cf_backbone + ")", cf_results)] if cf_results else []) + list(
        by_mode.items()
    )
    for name, res in rows:
        seconds = sum(v for k, v in res.items() if k.startswith("stage_") and k.endswith("_seconds"))
        print(
            f"{name:<11} {res['eval_auc']:>9.4f} {res.get('test_auc_llm_rows', res.get('test_auc', np.nan)):>9.4f} "
            f"{res.get('test_uauc', np.nan):>9.4f} {res.get('test_auc_warm', np.nan):>12.4f} "
            f"{res.get('test_auc_cold', np.nan):>12.4f} {seconds:>8.0f}"
        )
    if data_args.table_note:
        print(f"\n{data_args.table_note}")


def warm_cold_aucs(
    folders: dict, train, cold_rule: str, llm_rows: np.ndarray, test_length: int
) -> tuple[dict, dict]:
    """
    Test AUC of every model on the warm and cold rows (`ccf_llm.data.warm_cold_masks`) of the test rows the LLM
    modes scored (`llm_rows`: their indices in the test split of `test_length` rows), from the per-row scores each
    wrote (`folder/scores_test.parquet`; the CF model's cover the whole split, so its overall test AUC is recomputed
    on those rows as `test_auc_llm_rows`): `({name: {"test_auc_warm", "test_auc_cold"}}, {"warm": n, "cold": n})`.
    A subset with one label only gets NaN.
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    def auc(frame) -> float:
        return (
            float(roc_auc_score(frame["label"], frame["score"]))
            if frame["label"].nunique() == 2
            else float("nan")
        )

    frames = {name: pd.read_parquet(folder / "scores_test.parquet") for name, folder in folders.items()}
    if "cf" in frames:
        if len(frames["cf"]) != test_length:
            raise ValueError(
                f"{folders['cf']}/scores_test.parquet has {len(frames['cf'])} rows, the test split {test_length}"
            )
        frames["cf"] = frames["cf"].iloc[llm_rows].reset_index(drop=True)
    keys = next(iter(frames.values()))[["user_id", "item_id", "label"]].to_numpy()
    for name, frame in frames.items():
        if not (frame[["user_id", "item_id", "label"]].to_numpy() == keys).all():
            raise ValueError(
                f"{folders[name]}/scores_test.parquet is not over the same test rows as the others"
            )
    masks = dict(
        zip(("warm", "cold"), warm_cold_masks(keys[:, 0], keys[:, 1], train, cold=cold_rule), strict=True)
    )
    aucs = {
        name: {f"test_auc_{k}": auc(frame[m]) for k, m in masks.items()} for name, frame in frames.items()
    }
    if "cf" in frames:
        aucs["cf"]["test_auc_llm_rows"] = auc(frames["cf"])
    return aucs, {k: int(m.sum()) for k, m in masks.items()}


def _stored_token():
    from huggingface_hub import get_token

    return get_token()


if __name__ == "__main__":
    main()
