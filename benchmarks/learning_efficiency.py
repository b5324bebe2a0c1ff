"""Learning efficiency on ML-1M: training-loss and validation-AUC curves of CCF-LLM training settings ("arms").

    python benchmarks/learning_efficiency.py --data_dir ../shared/data/ml-1m --cf_checkpoint outputs/cf/mf \\
        [--arms NAME ...] [--seeds 0 1 2] [--output_dir outputs/learning_efficiency] [--eval_rows 1000]

Each arm trains SmolLM2-135M-Instruct (auto dtype) on the same seeded training rows with `CCFTrainer` (one trainer
per stage, as `examples/run_ctr.py` does) and logs the training loss every `--logging_steps` optimizer steps and the
validation AUC / UAUC on a fixed subsample of `--eval_rows` validation rows (drawn with `--eval_seed`, the same rows
for every seed; the test set is never read) every `--eval_steps`, through the Trainer's own evaluation loop; the
final model's point is its row-ordered scores (`score_rows`), which also give the intervals. Each seed of
`--seeds` trains every arm again on its own training rows and initialization; an arm is finished when
`OUTPUT_DIR/seed<S>/<arm>.json` exists; a rerun skips it. The constant-prediction level of Eq. 5 (the loss of the
best constant p_yes, p_no) is computed from the training labels and drawn as a reference line.

Writes `benchmarks/results/<results_name>.{json,md}` and `<results_name>_<cpu kind>.png` (one section per CPU kind,
`benchmarks/report.py`; `--results_name` defaults to `learning_efficiency`, the MF runs: give each CF checkpoint its
own, and `--output_dir` defaults to `outputs/<results_name>`; an arm that fused another type of CF model is
refused); with several seeds, every arm also gets its mean over seeds, compared on the same rows (a bootstrap over
users of the seed-averaged AUC).
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from peft import load_peft_weights, set_peft_model_state_dict
from scipy.optimize import minimize
from sklearn.metrics import roc_auc_score
from transformers import AutoModel, TrainerCallback, set_seed

from ccf_llm import (
    FUSION_MODE_TABLE,
    CCFDataCollator,
    CCFLlamaForCTR,
    CCFLlamaProcessor,
    ccf_ctr_loss,
    load_llm,
    score_rows,
)
from ccf_llm.data import CTRRows, item_titles, load_movielens_1m, seeded_subsample
from ccf_llm.metrics import uauc, user_bootstrap
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


INJECT = "inject"  # CoLLM-style injection: every `gate` arm is compared with it where it ran
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


class SkipFinalEvaluation(TrainerCallback):
    """Drops the Trainer's evaluation at a stage's last step: the arm's final point comes from `score_rows`."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = False
        return control


def seed_dir(args, seed: int) -> Path:
    return Path(args.output_dir) / f"seed{seed}"


def run_arm(name: str, spec: dict, args, seed: int, splits, titles, cf_model, eval_rows) -> dict:
    set_seed(seed)
    llm, tokenizer = load_llm(dtype=args.dtype)
    mode = spec["mode"]
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, 838, 3255, cf_models=[cf_model] if FUSION_MODE_TABLE[mode].uses_cf else None, fusion_mode=mode,
        zero_init_gate=spec["zero_init_gate"], gate_init_alpha=spec["gate_init_alpha"],
    )  # fmt: skip
    processor = CCFLlamaProcessor(tokenizer, titles, config=model.config, template=spec["template"],
                                  history_size=spec["history_size"])  # fmt: skip
    # as run_ctr.py: a sequential source (SASRec) is standardized over the training rows' histories
    if spec["standardize_cf"] and model.config.uses_cf:
        history = splits["train"].data.column("history") if model.config.max_cf_history else None
        model.fit_cf_standardization(None if history is None else processor.cf_history(history))
    evaluation = processor.process_dataset(eval_rows)
    out = seed_dir(args, seed) / name
    base_args = CCFTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        num_train_epochs=1, logging_steps=args.logging_steps, eval_strategy="steps", eval_steps=args.eval_steps,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=seed, lora_dropout=0.0,
        train_sampling_strategy="group_by_length",
    )  # fmt: skip
    peft_model = add_lora(model, base_args)
    history, offset, start = [], 0, time.perf_counter()
    trained = [number for number, stage in enumerate(spec["stages"])
               if stage["rows"] and (FUSION_MODE_TABLE[mode].uses_cf or stage["stage"] == "lora")]  # fmt: skip
    for number in trained:
        stage = spec["stages"][number]
        train = processor.process_dataset(
            seeded_subsample(splits["train"], stage["rows"], seed + 10 + number)
        )
        stage_args = dataclasses.replace(
            base_args, stage=stage["stage"], learning_rate=stage["learning_rate"],
            warmup_steps=stage["warmup_steps"], lr_scheduler_type=stage["scheduler"], output_dir=str(out / str(number)),
        )  # fmt: skip
        trainer = CCFTrainer(model=peft_model, args=stage_args, train_dataset=train, eval_dataset=evaluation,
                             data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
        shared = _shared_stage_dir(args, spec, number, seed)
        final = number == trained[-1] and shared is None  # the final point comes from score_rows below
        if final:
            trainer.add_callback(SkipFinalEvaluation())
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
        if args.eval_at_start and (number == 0 or not history):
            history.append({"step": 0, "stage": stage["stage"], **_metrics(trainer.evaluate())})
        trainer.train()
        for record in trainer.state.log_history:
            entry = {"step": offset + record["step"], "stage": stage["stage"]}
            if "loss" in record:
                history.append({**entry, "loss": record["loss"]})
            elif "eval_auc" in record:
                history.append({**entry, **_metrics(record)})
        end = offset + trainer.state.global_step  # the stage's end, unless evaluated there already
        if not final and not (history and history[-1]["step"] == end and "auc" in history[-1]):
            history.append({"step": end, "stage": stage["stage"],
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
    scores = np.asarray(scores, dtype=np.float64)
    if not history or history[-1]["step"] != offset or "auc" not in history[-1]:  # the final model's point
        history.append({"step": offset, "stage": spec["stages"][trained[-1]]["stage"],
                        "auc": float(roc_auc_score(evaluation["label"], scores)),
                        "uauc": uauc(scores, evaluation["label"], evaluation["user_id"])})  # fmt: skip
    result = {"arm": name, "spec": spec, "seed": seed, "eval_seed": args.eval_seed, "eval_rows": args.eval_rows,
              "cf_checkpoint": args.cf_checkpoint, "cf_model_type": cf_model.config.model_type,
              "seconds": round(time.perf_counter() - start, 1), "history": history,
              "scores": scores.round(6).tolist(), "scores_order": "rows"}  # fmt: skip
    (seed_dir(args, seed) / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _shared_stage_dir(args, spec: dict, number: int, seed: int) -> Path | None:
    """
    Where stage 1 of an arm is kept for every arm with the same stage 1 (same mode, prompt, initialization, rows and
    optimizer settings: the model then sees exactly the same inputs and updates); None for later stages.
    """
    if number != 0:
        return None
    key = {k: v for k, v in spec.items() if k not in ("stages", "fusion_weights")} | {"stage": spec["stages"][0], "seed": seed,
           "cf": args.cf_checkpoint if FUSION_MODE_TABLE[spec["mode"]].uses_cf else None, "batch": args.batch_size,
           "dtype": args.dtype, "eval_rows": args.eval_rows, "eval_steps": args.eval_steps, "eval_seed": args.eval_seed,
           "eval_at_start": args.eval_at_start}  # fmt: skip
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return seed_dir(args, seed) / "stage1" / digest


def _metrics(record: dict) -> dict:
    return {k.removeprefix("eval_"): record[k] for k in ("eval_auc", "eval_uauc") if k in record} | (
        {"eval_loss": record["eval_loss"]} if "eval_loss" in record else {}
    )


def training_losses(history: list[dict]) -> list[dict]:
    """The logged training losses: not the evaluations (which arms before 2026-12-06 stored with their validation
    loss under "loss" too)."""
    return [h for h in history if "loss" in h and "auc" not in h]


TITLE = "Learning efficiency on ML-1M: training loss and validation AUC per training setting"


def smoothed_losses(history: list[dict], window: int = 4) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([h["step"] for h in training_losses(history)])
    losses = np.array([h["loss"] for h in training_losses(history)])
    if not len(losses):  # fewer steps than --logging_steps
        return steps, losses
    kernel = np.ones(min(window, len(losses))) / min(window, len(losses))
    return steps[len(kernel) - 1 :], np.convolve(losses, kernel, mode="valid")


def stage_end(history: list[dict], stage: str) -> dict:
    """The last evaluation and the mean of the last 4 logged losses of `stage`."""
    rows = [h for h in history if h["stage"] == stage]
    evals, losses = [h for h in rows if "auc" in h], [h["loss"] for h in training_losses(rows)]
    return {
        "auc": evals[-1]["auc"] if evals else None,
        "loss": float(np.mean(losses[-4:])) if losses else None,
    }


def load_arms(args, cf_model_type: str) -> dict[int, dict[str, dict]]:
    """The finished arms of each seed of `--seeds` (seed -> arm -> its JSON), checked to be scored on the same rows
    and, where they record it (since 2026-12-06), to have fused a CF model of type `cf_model_type`."""
    found = {}
    for seed in args.seeds:
        arms = {}
        for name in ARMS:
            path = seed_dir(args, seed) / f"{name}.json"
            if not path.is_file():
                continue
            arms[name] = arm = json.loads(path.read_text())
            if arm.get("scores_order") != "rows":
                raise ValueError(f"{path}: the scores are not in row order: rerun this arm")
            # arms written before --eval_seed drew their validation rows with their own seed
            drawn = arm.get("eval_seed", seed), len(arm["scores"])
            if drawn != (args.eval_seed, args.eval_rows):
                raise ValueError(
                    f"{path} was scored on {drawn[1]} validation rows drawn with seed {drawn[0]}, not on the "
                    f"{args.eval_rows} rows of --eval_seed {args.eval_seed}: pass those or rerun it"
                )
            if arm.get("cf_model_type", cf_model_type) != cf_model_type:
                raise ValueError(
                    f"{path} fused a {arm['cf_model_type']} model ({arm['cf_checkpoint']}), not the {cf_model_type} "
                    f"of --cf_checkpoint {args.cf_checkpoint}: give each CF checkpoint its own --results_name"
                )
        if arms:
            found[seed] = arms
    return found


def summarize(found: dict[int, dict[str, dict]], labels, users, cf_name: str, cf_scores: np.ndarray) -> dict:
    """
    Intervals (bootstrap over users) of every arm of every seed and of the CF model, each arm compared with the
    reference arm of its seed and `gate` arms with the CF model and with `inject` (CoLLM, the issue's comparison) where
    that seed has it; with several seeds, each arm present in all of them also gets its mean over seeds, compared the
    same way on the seed-averaged AUC of each resample.
    """
    names = [name for name in ARMS if any(name in arms for arms in found.values())]
    several = len(found) > 1
    complete = [name for name in names if all(name in arms for arms in found.values())]
    reference = "gate_as_is" if "gate_as_is" in complete else (complete or names)[0]
    key = lambda name, seed: f"{name} seed {seed}" if several else name  # noqa: E731
    pooled = lambda name: tuple(key(name, seed) for seed in found)  # noqa: E731
    scores = {key(n, s): np.array(arm["scores"]) for s, arms in found.items() for n, arm in arms.items()}
    pairs = []
    for seed, arms in found.items():
        pairs += [(key(n, seed), key(reference, seed)) for n in arms if n != reference and reference in arms]
        pairs += [(key(n, seed), cf_name) for n in arms if n.startswith("gate")]
        pairs += [(key(n, seed), key(INJECT, seed)) for n in arms if n.startswith("gate") and INJECT in arms]
    if several:
        pairs += [(pooled(n), pooled(reference)) for n in complete if n != reference]
        pairs += [(pooled(n), cf_name) for n in complete if n.startswith("gate")]
        pairs += [
            (pooled(n), pooled(INJECT)) for n in complete if n.startswith("gate") and INJECT in complete
        ]
    # `gate` vs `inject` is also the reference pair where `inject` is the reference
    pairs = list(dict.fromkeys(pairs))
    boot = user_bootstrap(scores | {cf_name: cf_scores}, labels, users, pairs=pairs)
    compared = dict(zip(pairs, boot["pairs"].values(), strict=True))
    rows = {}
    for name in names:
        runs = {}
        for seed, arms in found.items():
            if name in arms:
                arm, k = arms[name], key(name, seed)
                runs[str(seed)] = {"seconds": arm["seconds"], **boot["models"][k],
                                   "stage_1": stage_end(arm["history"], arm["spec"]["stages"][0]["stage"]),
                                   "stage_2": stage_end(arm["history"], arm["spec"]["stages"][1]["stage"]),
                                   "vs_reference": compared.get((k, key(reference, seed))),
                                   "vs_cf": compared.get((k, cf_name)),
                                   "vs_inject": compared.get((k, key(INJECT, seed)))}  # fmt: skip
        rows[name] = {
            "spec": next(arms[name]["spec"] for arms in found.values() if name in arms),
            "seeds": runs,
        }
        if several and name in complete:
            mean = functools.partial(_mean_over, list(runs.values()))
            rows[name]["mean"] = {"auc": mean("auc"), "uauc": mean("uauc"), "seconds": mean("seconds"),
                                  "stage_1": {"loss": mean("stage_1", "loss"), "auc": mean("stage_1", "auc")},
                                  "stage_2": {"loss": mean("stage_2", "loss"), "auc": mean("stage_2", "auc")},
                                  "vs_reference": compared.get((pooled(name), pooled(reference))),
                                  "vs_cf": compared.get((pooled(name), cf_name)),
                                  "vs_inject": compared.get((pooled(name), pooled(INJECT)))}  # fmt: skip
    cf = {k: boot["models"][cf_name][k] for k in ("auc", "auc_ci", "uauc", "uauc_ci")}
    return {"reference": reference, "seeds": list(found), "cf": {"name": cf_name, **cf},
            "bootstrap": {k: boot[k] for k in ("n_resamples", "confidence", "users")}, "arms": rows}  # fmt: skip


def _mean_over(runs: list[dict], *path: str) -> float | None:
    """The mean over seeds of `run[path[0]][path[1]]...`; None where a seed lacks it."""
    values = [functools.reduce(dict.__getitem__, path, run) for run in runs]
    return None if any(value is None for value in values) else float(np.mean(values))


def report(args, level: float, eval_rows, cf_model) -> None:
    """Intervals and curves of every finished arm and seed into benchmarks/results (this CPU kind's entry)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from report import RESULTS, provenance, save_results

    from ccf_llm.precision import resolve_dtype

    found = load_arms(args, cf_model.config.model_type)
    if not found:
        return
    cf_name = f"CF alone ({Path(args.cf_checkpoint).name})"
    # SASRec scores a row from its latest history items, the table models from its user id
    rows = CTRRows(eval_rows, max_history=getattr(cf_model.config, "max_history", 0)).tensors
    with torch.no_grad():  # the CF backbone's own scores on the same rows: the bar fusion must clear
        cf_scores = cf_model(rows["user_ids"], rows["item_ids"], rows.get("history")).logits
    summary = summarize(found, eval_rows["label"], eval_rows["user_id"], cf_name, cf_scores.float().numpy())
    origin = provenance(resolve_dtype(args.dtype))
    figure_name = f"{args.results_name}_{origin['cpu_kind'].lower()}.png"  # one figure per CPU kind
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = ["-", "--", ":", "-."]
    for name in summary["arms"]:
        color = None
        for number, arms in enumerate(found.values()):
            if name not in arms:
                continue
            history, style = arms[name]["history"], styles[number % len(styles)]
            label = name if color is None else None
            steps, losses = smoothed_losses(history)
            (line,) = left.plot(steps, losses, style, color=color, label=label, lw=1.2)
            color = line.get_color()
            evals = [h for h in history if "auc" in h]
            right.plot(
                [h["step"] for h in evals], [h["auc"] for h in evals], "o" + style, color=color, label=label
            )
    left.axhline(level, color="k", ls="--", lw=1, label=f"constant prediction ({level:.3f})")
    first = next(iter(next(iter(found.values())).values()))["history"]
    boundary = max((h["step"] for h in first if h["stage"] == "lora"), default=None)
    for axis in (left, right):
        if boundary:
            axis.axvline(boundary, color="grey", ls=":", lw=1)
        axis.set_xlabel("optimizer step (batch 16; dotted: stage 1 | stage 2)")
    left.set_ylabel("training loss, Eq. 5 (mean of 4 logs)")
    right.set_ylabel(f"validation AUC ({args.eval_rows} fixed rows)")
    backbone = type(cf_model).__name__.removesuffix("Model")  # MF, LightGCN, SASRec
    right.axhline(0.5, color="k", ls="--", lw=1, label="chance")
    # the bar fusion must clear: the CF model's own AUC on the same rows
    right.axhline(summary["cf"]["auc"], color="grey", ls="-.", lw=1.2,
                  label=f"{backbone} alone ({summary['cf']['auc']:.3f})")  # fmt: skip
    left.legend(fontsize=7), right.legend(fontsize=7)
    seeds = ", ".join(f"{seed} {styles[n % len(styles)]}" for n, seed in enumerate(found))
    figure.suptitle(f"CCF-LLM on ML-1M ({backbone}), SmolLM2-135M-Instruct, {origin['cpu_kind']}: learning efficiency"
                    + (f" (seeds, line style: {seeds})" if len(found) > 1 else ""))  # fmt: skip
    figure.tight_layout()
    figure.savefig(RESULTS / figure_name, dpi=110)
    out = {"provenance": origin, "constant_loss": level, "eval_rows": args.eval_rows, "eval_seed": args.eval_seed,
           "figure": figure_name, **summary}  # fmt: skip
    print("\n".join(save_results(args.results_name, out, render, TITLE, RESULTS)))


def render(out: dict) -> list[str]:
    fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    seeds = out.get("seeds", [0])
    figure = out.get("figure", "learning_efficiency.png")  # entries before per-kind figures
    if len(seeds) == 1:
        seed_text = "one seed"
    else:
        seed_text = (
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), each training every arm on its own training rows "
            "from its own initialization; an arm's mean row compares the seed-averaged AUC on each resample, so its "
            "interval holds the users' sampling noise once and not the spread between seeds, which its seed rows show"
        )
        mean_diffs = [row["mean"].get(k) or {} for row in out["arms"].values() if "mean" in row
                      for k in ("vs_reference", "vs_cf", "vs_inject")]  # fmt: skip
        # entries before the between-seeds interval lack it
        if any("between_seeds" in diff for diff in mean_diffs):
            seed_text += (
                "; after it, `seeds [CI], p` is the Student-t interval of the mean of the seeds' own differences "
                f"(df = {len(seeds) - 1}: the spread between seeds, without the users' noise)"
            )
    runs_of = lambda row: [*row.get("seeds", {}).values(), row.get("mean", {})]  # noqa: E731
    with_inject = any(run.get("vs_inject") for row in out["arms"].values() for run in runs_of(row))
    lines = [
        f"Validation AUC on {out['eval_rows']} fixed validation rows (test set unread), 95% intervals from "
        f"{out['bootstrap']['n_resamples']} bootstrap resamples of its {out['bootstrap']['users']} users; {seed_text}. "
        f"Loss: mean of the last 4 logged training losses of a stage (Eq. 5; constant-prediction level "
        f"{out['constant_loss']:.3f}). Difference: paired, against `{out['reference']}`. Curves: "
        f"[{figure}]({figure}).",
        "",
        "| arm | stage 1 loss | stage 1 AUC | stage 2 loss | final AUC [95% CI] | final UAUC [95% CI] | "
        "AUC diff vs reference [95% CI], p | AUC diff vs CF alone [95% CI], p | "
        + ("AUC diff vs `inject` [95% CI], p | " if with_inject else "")
        + "train+eval s |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if with_inject else ""),
        f"| {out['cf']['name']} | | | | {out['cf']['auc']:.3f} [{out['cf']['auc_ci'][0]:.3f}, "
        f"{out['cf']['auc_ci'][1]:.3f}] | {out['cf']['uauc']:.3f} [{out['cf']['uauc_ci'][0]:.3f}, "
        f"{out['cf']['uauc_ci'][1]:.3f}] | | | " + ("| " if with_inject else "") + "|",
    ]

    def compared(diff):
        if not diff:
            return ""
        low, high = diff["auc_diff_ci"]
        text = f"{diff['auc_diff']:+.3f} [{low:+.3f}, {high:+.3f}], p={diff['auc_p']:.3f}"
        if "between_seeds" in diff:  # a mean row: the spread between seeds too
            (low, high), p = diff["between_seeds"]["auc_diff_ci"], diff["between_seeds"]["auc_p"]
            text += f"; seeds [{low:+.3f}, {high:+.3f}], p={p:.3f}"
        return text

    def interval(run, metric):
        return f"{run[metric]:.3f} [{run[metric + '_ci'][0]:.3f}, {run[metric + '_ci'][1]:.3f}]"

    for name, row in out["arms"].items():
        # entries before --seeds held one seed's figures per arm
        runs = row.get("seeds", {str(seeds[0]): row})
        labelled = [(f"`{name}`" + (f" seed {seed}" if len(seeds) > 1 else ""), run, interval(run, "auc"),
                     interval(run, "uauc")) for seed, run in runs.items()]  # fmt: skip
        if "mean" in row:
            mean = row["mean"]
            labelled.append(
                (f"`{name}` mean of {len(runs)} seeds", mean, fmt(mean["auc"]), fmt(mean["uauc"]))
            )
        for label, run, auc, uauc_text in labelled:
            lines.append(
                f"| {label} | {fmt(run['stage_1']['loss'])} | {fmt(run['stage_1']['auc'])} | "
                f"{fmt(run['stage_2']['loss'])} | {auc} | {uauc_text} | {compared(run['vs_reference'])} | "
                f"{compared(run.get('vs_cf'))} | "
                + (f"{compared(run.get('vs_inject'))} | " if with_inject else "")
                + f"{run['seconds']:.0f} |"
            )
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--cf_checkpoint", default="outputs/cf/mf")
    parser.add_argument("--output_dir", default=None, help="default: outputs/<results_name>")
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    parser.add_argument("--results_name", default="learning_efficiency",
                        help="benchmarks/results/<name>.{json,md} and <name>_<cpu kind>.png: one per CF checkpoint")  # fmt: skip
    parser.add_argument("--eval_rows", type=int, default=1000)
    parser.add_argument("--eval_steps", type=int, default=50)
    parser.add_argument("--logging_steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train every arm once per seed")
    parser.add_argument(
        "--eval_seed", type=int, default=0, help="draws the validation rows, the same for all seeds"
    )
    parser.add_argument("--eval_at_start", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate the untrained model too (the curves' first point)")  # fmt: skip
    args = parser.parse_args()
    args.output_dir = args.output_dir or f"outputs/{args.results_name}"
    torch.set_num_threads(2)
    splits = load_movielens_1m(args.data_dir)
    titles = item_titles(splits)
    cf_model = AutoModel.from_pretrained(args.cf_checkpoint)
    # finished arms that cannot be reported fail now, not after training
    load_arms(args, cf_model.config.model_type)
    level = constant_loss(np.asarray(splits["train"]["label"]))
    print(f"constant-prediction level of Eq. 5 on train: {level:.4f}", flush=True)
    eval_rows = seeded_subsample(splits["validation"], args.eval_rows, args.eval_seed)
    for seed in args.seeds:
        seed_dir(args, seed).mkdir(parents=True, exist_ok=True)
        for name in args.arms:
            if not (seed_dir(args, seed) / f"{name}.json").is_file():
                print(f"[learning_efficiency] {name}, seed {seed}", flush=True)
                run_arm(name, ARMS[name], args, seed, splits, titles, cf_model, eval_rows)
    report(args, level, eval_rows, cf_model)


if __name__ == "__main__":
    main()
