"""Learning efficiency on ML-1M: training-loss and validation-AUC curves of CCF-LLM training settings ("arms").

    python benchmarks/learning_efficiency.py --data_dir ../shared/data/ml-1m --cf_checkpoint outputs/cf/mf \\
        [--arms NAME ...] [--output_dir outputs/learning_efficiency] [--eval_rows 1000]

Each arm trains SmolLM2-135M-Instruct (auto dtype) on the same seeded training rows with `CCFTrainer` (one trainer
per stage, as `examples/run_ctr.py` does) and logs the training loss every `--logging_steps` optimizer steps and the
validation AUC / UAUC on a fixed seeded subsample of `--eval_rows` validation rows (the test set is never read)
every `--eval_steps`, through the Trainer's own evaluation loop. An arm is finished when
`OUTPUT_DIR/<arm>.json` exists; a rerun skips it. The constant-prediction level of Eq. 5 (the loss of the best
constant p_yes, p_no) is computed from the training labels and drawn as a reference line.

Writes `benchmarks/results/learning_efficiency.{json,md,png}` (one section per CPU kind, `benchmarks/report.py`).
"""

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from peft import load_peft_weights, set_peft_model_state_dict
from scipy.optimize import minimize
from transformers import AutoModel, set_seed

from ccf_llm import (
    FUSION_MODE_TABLE,
    CCFDataCollator,
    CCFLlamaForCTR,
    CCFLlamaProcessor,
    ccf_ctr_loss,
    load_llm,
    score_rows,
)
from ccf_llm.data import item_titles, load_movielens_1m, seeded_subsample
from ccf_llm.trainer_ccf_llama import CCFTrainer, CCFTrainingArguments, add_lora

SHORT = "User liked {history}. User feature: {user}. Will they enjoy {target}? #Answer:"
SHORT_TEXT = "User liked {history}. Will they enjoy {target}? #Answer:"
BASE = {  # the reproduction's quick budget (examples/configs/reproduce_ml1m.json), per stage
    "mode": "gate",
    "history_size": 2,
    "template": SHORT,
    "zero_init_gate": True,
    "gate_init_alpha": 0.0,
    "fusion_weights": "fp32",  # the trainable ALG/GATE copies: fp32 (add_lora) or "llm_dtype"
    "standardize_cf": True,
    "stages": [
        {"stage": "lora", "rows": 1600, "learning_rate": 1e-3, "warmup_steps": 0, "scheduler": "constant"},
        {"stage": "fusion", "rows": 1600, "learning_rate": 1e-2, "warmup_steps": 0, "scheduler": "constant"},
    ],
}


def arm(**changes) -> dict:
    stages = changes.pop("stages", None)
    out = {**BASE, **changes}
    out["stages"] = [{**s, **c} for s, c in zip(BASE["stages"], stages or [{}, {}], strict=True)]
    return out


WARM = {"learning_rate": 1e-3, "warmup_steps": 20, "scheduler": "cosine"}  # stage 2: warmup, then decay
ARMS = {
    # the settings the issue measured: fusion lr 1e-2, no warmup, zero-initialized GATE (α = 0 in stage 1)
    "gate_as_is": arm(),
    # as gate_as_is, but ALG/GATE train in the LLM's dtype (bf16 on a bf16 machine), as before add_lora kept them fp32
    "gate_as_is_fusion_in_llm_dtype": arm(fusion_weights="llm_dtype"),
    # stage 2 with a 10x smaller learning rate, warmup and a decaying schedule
    "gate_fusion_lr1e-3_warmup": arm(stages=[{}, WARM]),
    # α starts at a constant, so stage 1 trains LoRA on fused titles (the paper's stage 1: fusion untrained, not off)
    "gate_alpha0.5": arm(gate_init_alpha=0.5, stages=[{}, WARM]),
    "gate_alpha1": arm(gate_init_alpha=1.0, stages=[{}, WARM]),
    "inject": arm(mode="inject", stages=[{}, WARM]),
    "text": arm(mode="text", template=SHORT_TEXT, stages=[{}, {"rows": 0}]),
}  # fmt: skip


def constant_loss(labels: np.ndarray, bpr_weight: float = 2.0) -> float:
    """Eq. 5 of the best constant prediction (log p_yes, log p_no), found numerically: the 'learned nothing' level."""
    y = torch.tensor(labels, dtype=torch.float64)

    def loss(v):
        log_p = torch.log_softmax(
            torch.tensor([v[0], v[1], 0.0], dtype=torch.float64), 0
        )  # yes, no, the rest
        return float(ccf_ctr_loss(log_p[0].expand_as(y), log_p[1].expand_as(y), y, bpr_weight))

    return float(minimize(loss, x0=[0.0, 0.0], method="Nelder-Mead").fun)


def run_arm(name: str, spec: dict, args, splits, titles, cf_model) -> dict:
    set_seed(args.seed)
    llm, tokenizer = load_llm(dtype=args.dtype)
    mode = spec["mode"]
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, 838, 3255, cf_models=[cf_model] if FUSION_MODE_TABLE[mode].uses_cf else None, fusion_mode=mode,
        zero_init_gate=spec["zero_init_gate"], gate_init_alpha=spec["gate_init_alpha"], standardize_cf=spec["standardize_cf"] and FUSION_MODE_TABLE[mode].uses_cf,
    )  # fmt: skip
    processor = CCFLlamaProcessor(tokenizer, titles, config=model.config, template=spec["template"],
                                  history_size=spec["history_size"])  # fmt: skip
    evaluation = processor.process_dataset(seeded_subsample(splits["validation"], args.eval_rows, args.seed))
    out = Path(args.output_dir) / name
    base_args = CCFTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        num_train_epochs=1, logging_steps=args.logging_steps, eval_strategy="steps", eval_steps=args.eval_steps,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=args.seed, lora_dropout=0.0,
        train_sampling_strategy="group_by_length",
    )  # fmt: skip
    peft_model = add_lora(model, base_args)
    history, offset, start = [], 0, time.perf_counter()
    for number, stage in enumerate(spec["stages"]):
        if stage["rows"] == 0 or (not FUSION_MODE_TABLE[mode].uses_cf and stage["stage"] != "lora"):
            continue
        train = processor.process_dataset(
            seeded_subsample(splits["train"], stage["rows"], args.seed + 10 + number)
        )
        stage_args = dataclasses.replace(
            base_args, stage=stage["stage"], learning_rate=stage["learning_rate"],
            warmup_steps=stage["warmup_steps"], lr_scheduler_type=stage["scheduler"], output_dir=str(out / str(number)),
        )  # fmt: skip
        trainer = CCFTrainer(model=peft_model, args=stage_args, train_dataset=train, eval_dataset=evaluation,
                             data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
        shared = _shared_stage_dir(args, spec, number)
        if (
            shared is not None and (shared / "history.json").is_file()
        ):  # an earlier arm trained this exact stage
            set_peft_model_state_dict(peft_model, load_peft_weights(str(shared)))
            stage_history = json.loads((shared / "history.json").read_text())
            history += stage_history["history"]
            offset += stage_history["steps"]
            print(f"[learning_efficiency] {name}: stage {number + 1} shared from {shared}", flush=True)
            continue
        stage_start = len(history)
        if (
            spec["fusion_weights"] == "llm_dtype"
        ):  # undo add_lora's fp32 copies of ALG/GATE (before this stage)
            for parameter_name, parameter in peft_model.named_parameters():
                if ".modules_to_save." in parameter_name:
                    parameter.data = parameter.data.to(model.dtype)
        if number == 0 or not history:
            history.append({"step": 0, "stage": stage["stage"], **_metrics(trainer.evaluate())})
        trainer.train()
        for record in trainer.state.log_history:
            entry = {"step": offset + record["step"], "stage": stage["stage"]}
            if "loss" in record:
                history.append({**entry, "loss": record["loss"]})
            elif "eval_auc" in record:
                history.append({**entry, **_metrics(record)})
        if trainer.state.global_step % args.eval_steps:  # the stage's end, when not already evaluated
            history.append({"step": offset + trainer.state.global_step, "stage": stage["stage"],
                            **_metrics(trainer.evaluate())})  # fmt: skip
        offset += trainer.state.global_step
        if shared is not None:
            peft_model.save_pretrained(shared)
            (shared / "history.json").write_text(
                json.dumps({"steps": trainer.state.global_step, "history": history[stage_start:]}) + "\n"
            )
    # the final model's validation scores in row order, for intervals and paired tests (not trainer.predict: with
    # train_sampling_strategy="group_by_length" the Trainer's evaluation sampler groups rows by length too)
    peft_model.eval()
    scores = score_rows(peft_model, processor, evaluation["user_id"], evaluation.data.column("history"),
                        evaluation["item_id"], batch_size=64)  # fmt: skip
    result = {"arm": name, "spec": spec, "seconds": round(time.perf_counter() - start, 1), "history": history,
              "scores": np.asarray(scores, dtype=np.float64).round(6).tolist(), "scores_order": "rows"}  # fmt: skip
    (Path(args.output_dir) / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _shared_stage_dir(args, spec: dict, number: int) -> Path | None:
    """
    Where stage 1 of an arm is kept for every arm with the same stage 1 (same mode, prompt, initialization, rows and
    optimizer settings: the model then sees exactly the same inputs and updates); None for later stages.
    """
    if number != 0:
        return None
    key = {k: v for k, v in spec.items() if k not in ("stages", "fusion_weights")} | {"stage": spec["stages"][0], "seed": args.seed,
           "cf": args.cf_checkpoint if FUSION_MODE_TABLE[spec["mode"]].uses_cf else None, "batch": args.batch_size,
           "dtype": args.dtype, "eval_rows": args.eval_rows, "eval_steps": args.eval_steps}  # fmt: skip
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(args.output_dir) / "stage1" / digest


def _metrics(record: dict) -> dict:
    return {k.removeprefix("eval_"): record[k] for k in ("eval_auc", "eval_uauc", "eval_loss") if k in record}


TITLE = "Learning efficiency on ML-1M: training loss and validation AUC per training setting"


def smoothed_losses(history: list[dict], window: int = 4) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([h["step"] for h in history if "loss" in h])
    losses = np.array([h["loss"] for h in history if "loss" in h])
    kernel = np.ones(min(window, len(losses))) / min(window, len(losses))
    return steps[len(kernel) - 1 :], np.convolve(losses, kernel, mode="valid")


def stage_end(history: list[dict], stage: str) -> dict:
    """The last evaluation and the mean of the last 4 logged losses of `stage`."""
    rows = [h for h in history if h["stage"] == stage]
    evals, losses = [h for h in rows if "auc" in h], [h["loss"] for h in rows if "loss" in h]
    return {
        "auc": evals[-1]["auc"] if evals else None,
        "loss": float(np.mean(losses[-4:])) if losses else None,
    }


def report(args, level: float, evaluation, cf_model) -> None:
    """Intervals (bootstrap over users) and curves of every finished arm into benchmarks/results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from report import RESULTS, provenance, save_results

    from ccf_llm.metrics import user_bootstrap
    from ccf_llm.precision import resolve_dtype

    arms = {name: json.loads((Path(args.output_dir) / f"{name}.json").read_text())
            for name in ARMS if (Path(args.output_dir) / f"{name}.json").is_file()}  # fmt: skip
    if unordered := [name for name, found in arms.items() if found.get("scores_order") != "rows"]:
        raise ValueError(f"the scores of {unordered} are not in row order: rerun those arms")
    if not arms:
        return
    reference = "gate_as_is" if "gate_as_is" in arms else next(iter(arms))
    cf_name = f"CF alone ({Path(args.cf_checkpoint).name})"
    with torch.no_grad():  # the CF backbone's own scores on the same rows: the bar fusion must clear
        cf_scores = cf_model(torch.tensor(evaluation["user_id"]), torch.tensor(evaluation["item_id"])).logits
    scores = {n: np.array(a["scores"]) for n, a in arms.items()} | {cf_name: cf_scores.float().numpy()}
    pairs = [(n, reference) for n in arms if n != reference] + [
        (n, cf_name) for n in arms if n.startswith("gate")
    ]
    boot = user_bootstrap(scores, evaluation["label"], evaluation["user_id"], pairs=pairs)
    rows = {}
    for name, found in arms.items():
        rows[name] = {"spec": found["spec"], "seconds": found["seconds"], **boot["models"][name],
                      "stage_1": stage_end(found["history"], found["spec"]["stages"][0]["stage"]),
                      "stage_2": stage_end(found["history"], found["spec"]["stages"][1]["stage"]),
                      "vs_reference": boot["pairs"].get(f"{name} - {reference}"),
                      "vs_cf": boot["pairs"].get(f"{name} - {cf_name}")}  # fmt: skip
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, found in arms.items():
        steps, losses = smoothed_losses(found["history"])
        (line,) = left.plot(steps, losses, label=name, lw=1.2)
        evals = [h for h in found["history"] if "auc" in h]
        right.plot(
            [h["step"] for h in evals], [h["auc"] for h in evals], "o-", color=line.get_color(), label=name
        )
    left.axhline(level, color="k", ls="--", lw=1, label=f"constant prediction ({level:.3f})")
    first = next(iter(arms.values()))["history"]
    boundary = max((h["step"] for h in first if h["stage"] == "lora"), default=None)
    for axis in (left, right):
        if boundary:
            axis.axvline(boundary, color="grey", ls=":", lw=1)
        axis.set_xlabel("optimizer step (batch 16; dotted: stage 1 | stage 2)")
    left.set_ylabel("training loss, Eq. 5 (mean of 4 logs)")
    right.set_ylabel(f"validation AUC ({args.eval_rows} fixed rows)")
    right.axhline(0.5, color="k", ls="--", lw=1)
    left.legend(fontsize=7), right.legend(fontsize=7)
    figure.suptitle("CCF-LLM on ML-1M (MF), SmolLM2-135M-Instruct: learning efficiency")
    figure.tight_layout()
    figure.savefig(RESULTS / "learning_efficiency.png", dpi=110)
    out = {"provenance": provenance(resolve_dtype(args.dtype)),
           "constant_loss": level, "eval_rows": args.eval_rows, "reference": reference,
           "cf": {"name": cf_name, **{k: boot["models"][cf_name][k] for k in ("auc", "auc_ci", "uauc", "uauc_ci")}},
           "bootstrap": {k: boot[k] for k in ("n_resamples", "confidence", "users")}, "arms": rows}  # fmt: skip
    print("\n".join(save_results("learning_efficiency", out, render, TITLE)))


def render(out: dict) -> list[str]:
    fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        f"Validation AUC on {out['eval_rows']} fixed validation rows (test set unread), 95% intervals from "
        f"{out['bootstrap']['n_resamples']} bootstrap resamples of its {out['bootstrap']['users']} users; one seed. "
        f"Loss: mean of the last 4 logged training losses of a stage (Eq. 5; constant-prediction level "
        f"{out['constant_loss']:.3f}). Difference: paired, against `{out['reference']}`. Curves: "
        "[learning_efficiency.png](learning_efficiency.png).",
        "",
        "| arm | stage 1 loss | stage 1 AUC | stage 2 loss | final AUC [95% CI] | final UAUC [95% CI] | "
        "AUC diff vs reference [95% CI], p | AUC diff vs CF alone [95% CI], p | train+eval s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {out['cf']['name']} | | | | {out['cf']['auc']:.3f} [{out['cf']['auc_ci'][0]:.3f}, "
        f"{out['cf']['auc_ci'][1]:.3f}] | {out['cf']['uauc']:.3f} [{out['cf']['uauc_ci'][0]:.3f}, "
        f"{out['cf']['uauc_ci'][1]:.3f}] | | | |",
    ]

    def compared(diff):
        if not diff:
            return ""
        low, high = diff["auc_diff_ci"]
        return f"{diff['auc_diff']:+.3f} [{low:+.3f}, {high:+.3f}], p={diff['auc_p']:.3f}"

    for name, row in out["arms"].items():
        lines.append(
            f"| `{name}` | {fmt(row['stage_1']['loss'])} | {fmt(row['stage_1']['auc'])} | "
            f"{fmt(row['stage_2']['loss'])} | {row['auc']:.3f} [{row['auc_ci'][0]:.3f}, {row['auc_ci'][1]:.3f}] | "
            f"{row['uauc']:.3f} [{row['uauc_ci'][0]:.3f}, {row['uauc_ci'][1]:.3f}] | {compared(row['vs_reference'])} | "
            f"{compared(row.get('vs_cf'))} | "
            f"{row['seconds']:.0f} |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--cf_checkpoint", default="outputs/cf/mf")
    parser.add_argument("--output_dir", default="outputs/learning_efficiency")
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    parser.add_argument("--eval_rows", type=int, default=1000)
    parser.add_argument("--eval_steps", type=int, default=50)
    parser.add_argument("--logging_steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    splits = load_movielens_1m(args.data_dir)
    titles = item_titles(splits)
    cf_model = AutoModel.from_pretrained(args.cf_checkpoint)
    level = constant_loss(np.asarray(splits["train"]["label"]))
    print(f"constant-prediction level of Eq. 5 on train: {level:.4f}", flush=True)
    for name in args.arms:
        if not (Path(args.output_dir) / f"{name}.json").is_file():
            print(f"[learning_efficiency] {name}", flush=True)
            run_arm(name, ARMS[name], args, splits, titles, cf_model)
    report(args, level, seeded_subsample(splits["validation"], args.eval_rows, args.seed), cf_model)


if __name__ == "__main__":
    main()
