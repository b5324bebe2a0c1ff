# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Training CCF-LLM with the Hugging Face Trainer: Eq. 5 and the two-stage schedule of §3.4.

* `CCFTrainingArguments` adds the stage (`lora` = Θ_1, `fusion` = Θ_2, `end_to_end`), the schedule (stages in
  order, e.g. `lora+fusion`), the BPR weight k, whether the CF encoder is tuned and the LoRA settings to
  `TrainingArguments`: each is named here only.
* `add_lora(model, args)` wraps a `CCFLlamaForCTR` with PEFT LoRA; ALG and GATE (and the CF encoder when it is
  tuned) are PEFT `modules_to_save`, so the adapter folder carries everything training changed.
* `CCFTrainer` freezes all but the stage's parameters, optimizes Eq. 5 (`compute_loss`: `ccf_ctr_loss` over the
  model's log p_yes / log p_no with `args.bpr_weight`), stops with a clear error
  on a non-finite loss (the last saved checkpoint stays the last good one), and reports AUC / UAUC through the
  packaged `evaluate` metric. Two stages are two `CCFTrainer`s on the same model: stage 2 starts from stage 1's
  weights with a fresh optimizer (the optimizer only holds what is trainable when it is built).
* `CCFTwoStageTrainer` runs a whole schedule (`SCHEDULES`) as such `CCFTrainer`s: resume, shared stages, early
  stopping, the divergence guard and roll-back of a stage that lowers validation AUC.
* `compile_layers=True` compiles each decoder layer of the LLM in place (regional compilation) before training.
* More than one process: DDP as the Trainer does it; FSDP2 (`accelerate launch` with an FSDP config) also on CPU
  (`enable_fsdp_on_cpu`), later stages reuse the model the first one sharded in place, and `save_adapter` gathers
  the adapter's shards into whole tensors before the main process writes it.
"""

import dataclasses
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from .loss_ccf_llama import DEFAULT_BPR_WEIGHT, ccf_ctr_loss
from .metrics import compute_ctr_metrics

logger = logging.getLogger(__name__)

STAGES = ("lora", "fusion", "end_to_end")
"""What a stage trains (§3.4): `lora` Θ_1 (LoRA), `fusion` Θ_2 (ALG + GATE [+ the CF encoder]), `end_to_end` both."""
SCHEDULES = ("lora+fusion", "lora", "end_to_end")
"""The training strategies of Table 4, written as the stages each runs in order: the two-stage schedule of §3.4,
stage 1 only, end to end. A schedule is any `+`-joined sequence of `STAGES`."""
_LEGACY_SCHEDULES = {"two_stage": "lora+fusion", "stage1_only": "lora"}
FUSION_MODULES = ("alignment", "gate")


@dataclass
class CCFTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the CCF-LLM schedule (§3.4) and LoRA settings."""

    stage: str = field(
        default="lora",
        metadata={
            "help": "lora (stage 1: LoRA only), fusion (stage 2: ALG + GATE [+ CF encoder]) or end_to_end"
        },
    )
    bpr_weight: float = field(default=DEFAULT_BPR_WEIGHT, metadata={"help": "k of Eq. 5"})
    fusion_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the fusion stage (default: learning_rate)"}
    )
    train_cf_encoder: bool = field(
        default=False, metadata={"help": "also tune the CF encoder (Θ_E) in stage 2"}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "LLM modules that get LoRA (CoLLM: q, v)"},
    )
    schedule: str = field(
        default="lora+fusion",
        metadata={
            "help": "CCFTwoStageTrainer's stages in order, joined by '+': lora+fusion (§3.4), lora or end_to_end "
            "(Table 4); a mode without CF has no fusion weights and runs its first stage only"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "CCFTwoStageTrainer: stop a stage after this many evaluations without a better validation AUC "
            "and keep its best checkpoint (the paper's rule); needs eval_strategy steps or epoch"
        },
    )
    early_stopping_min_epochs: float = field(
        default=0.0,
        metadata={"help": "CCFTwoStageTrainer: epochs a stage trains before early stopping may end it"},
    )
    divergence_tolerance: float | None = field(
        default=0.25,
        metadata={
            "help": "CCFTwoStageTrainer: stop a stage whose training loss (mean of 4 logs) rises this fraction above "
            "its starting level; None turns the guard off"
        },
    )
    compile_layers: bool = field(
        default=False,
        metadata={
            "help": "torch.compile each decoder layer in place (dynamic shapes) before training: fuses the "
            "elementwise work of RMSNorm, RoPE, SiLU and LoRA; pays off once training outlasts the compile "
            "(about 45 s for SmolLM2 on 2 CPU cores)"
        },
    )

    def __post_init__(self):
        if self.schedule in _LEGACY_SCHEDULES:
            warnings.warn(f"schedule={self.schedule!r} is deprecated: write it as its stages, "
                          f"{_LEGACY_SCHEDULES[self.schedule]!r}", FutureWarning, stacklevel=2)  # fmt: skip
            self.schedule = _LEGACY_SCHEDULES[self.schedule]
        schedule_stages(self.schedule)  # an unknown schedule fails here, when the arguments are parsed
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.bpr_weight < 0:
            raise ValueError(f"bpr_weight must be >= 0, got {self.bpr_weight}")
        if self.stage == "fusion" and self.fusion_learning_rate is not None:
            self.learning_rate = (
                self.fusion_learning_rate
            )  # ALG/GATE start untrained: they may want a larger step
        if self.label_names is None:
            # `user_ids` ride along as a label so UAUC can group rows by user in every fusion mode
            self.label_names = ["labels", "user_ids"]
        super().__post_init__()


def add_lora(model, args: CCFTrainingArguments, peft_config=None):
    """
    Wrap `model` with LoRA on `args.lora_target_modules` (or with `peft_config`, whose `modules_to_save` must name
    the fusion modules); ALG/GATE (+ CF encoder) become `modules_to_save`.

    Every trainable weight is kept in fp32, also beside a bf16 LLM: PEFT upcasts LoRA itself
    (`autocast_adapter_dtype`), and the trainable copies of ALG/GATE are upcast here, since AdamW updates of bf16
    weights are lost to rounding once they fall below ~0.4 % of the weight (`CCFMLP` computes in its own dtype).
    """
    from peft import LoraConfig, get_peft_model

    modules = [
        m for m in FUSION_MODULES if hasattr(model, m)
    ]  # the fusion mode's parameters (FUSION_MODE_TABLE)
    if args.train_cf_encoder and hasattr(model, "cf_encoder"):
        modules.append("cf_encoder")
    if peft_config is None:
        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=list(args.lora_target_modules),
            modules_to_save=modules or None,
        )
    elif missing := sorted(set(modules) - set(peft_config.modules_to_save or ())):
        raise ValueError(
            f"peft_config.modules_to_save lacks {missing}: the fusion stage trains them and the adapter must carry them"
        )
    peft_model = get_peft_model(model, peft_config)
    for name, parameter in peft_model.named_parameters():
        if ".modules_to_save." in name and parameter.is_floating_point():
            parameter.data = parameter.data.float()
    return peft_model


def apply_stage(model, stage: str, train_cf_encoder: bool = False) -> int:
    """
    Set `requires_grad` for a stage of §3.4 on a PEFT-wrapped model: `lora` trains the LoRA weights (Θ_1),
    `fusion` the ALG and GATE copies (Θ_2, plus the CF encoder when `train_cf_encoder`), `end_to_end` both.
    Returns the number of trainable parameters; raises when the stage has nothing to train.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    wanted = set(FUSION_MODULES) | ({"cf_encoder"} if train_cf_encoder else set())
    trainable = 0
    for name, parameter in model.named_parameters():
        is_lora = "lora_" in name
        is_fusion = (
            ".modules_to_save." in name and name.split(".modules_to_save.")[0].rsplit(".", 1)[-1] in wanted
        )
        parameter.requires_grad = (is_lora and stage != "fusion") or (is_fusion and stage != "lora")
        trainable += parameter.numel() if parameter.requires_grad else 0
    if trainable == 0:
        raise ValueError(
            f"stage {stage!r} has nothing to train: LoRA weights need add_lora(...), fusion weights a CF fusion mode"
        )
    return trainable


def compile_decoder_layers(model, **compile_kwargs) -> int:
    """
    Regional compilation: `torch.compile` every decoder layer of the LLM inside `model` (a `CCFLlamaForCTR`, PEFT
    wrapped or not) in place, with dynamic shapes by default, so that all layers share one compiled graph.

    In place (`nn.Module.compile`) rather than accelerate's `compile_regions`: the latter wraps modules in
    `OptimizedModule`s, which renames parameters (`_orig_mod.`) and so changes PEFT adapter files, and it also
    compiles every other child (the CF encoders, whose sparse graph ops do not compile). Layers already compiled are
    left alone, so calling this once per stage costs one compilation. Returns the number of layers compiled now.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    compiled = 0
    for layer in base.language_model.layers:
        if getattr(layer, "_compiled_call_impl", None) is None:
            layer.compile(**{"dynamic": True, **compile_kwargs})
            compiled += 1
    return compiled


class CCFTrainer(Trainer):
    """
    `Trainer` for `CCFLlamaForCTR` (usually PEFT-wrapped): stage freezing, the training objective (Eq. 5 with
    `args.bpr_weight`, in `compute_loss`), AUC/UAUC evaluation.
    """

    def __init__(
        self, model=None, args: CCFTrainingArguments = None, compute_metrics=compute_ctr_metrics, **kwargs
    ):
        if not isinstance(args, CCFTrainingArguments):
            raise ValueError("CCFTrainer needs CCFTrainingArguments (stage, bpr_weight, LoRA settings)")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._uses_cf = base.config.uses_cf
        self.trainable_parameters = apply_stage(model, args.stage, args.train_cf_encoder)
        if args.compile_layers:
            compile_decoder_layers(model)
        super().__init__(model=model, args=args, compute_metrics=compute_metrics, **kwargs)

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator, self.args):
            self.is_fsdp_enabled = True
        if self.is_fsdp_enabled and is_fsdp_sharded(self.model):
            # a later stage on a model an earlier stage sharded in place: nothing left to wrap (accelerate would
            # look for `LlamaDecoderLayer` and find only `FSDPLlamaDecoderLayer`)
            self.accelerator.state.fsdp_plugin.auto_wrap_policy = None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # resuming a stage: adapters of checkpoints written before the model split load too (renamed keys)
        if not load_adapter_weights(self.model if model is None else model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not load_adapter_weights(self.model, self.state.best_model_checkpoint):
            super()._load_best_model()

    def _model_inputs(self, inputs: dict) -> dict:
        """What the model reads: not the labels, nor `user_ids` where it takes no user (they serve UAUC)."""
        return {k: v for k, v in inputs.items() if k != "labels" and (k != "user_ids" or self._uses_cf)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The training objective, Eq. 5 (`ccf_ctr_loss`), over the model's log p_yes / log p_no, k = `args.bpr_weight`."""
        outputs = model(**self._model_inputs(inputs))
        loss = ccf_ctr_loss(outputs.log_p_yes, outputs.log_p_no, inputs["labels"], self.args.bpr_weight)
        if model.training and not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step}: training stopped; the last "
                f"checkpoint in {self.args.output_dir} is the last good one (lower the learning rate)"
            )
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**self._model_inputs(inputs))
        loss = None
        if inputs.get("labels") is not None:
            loss = ccf_ctr_loss(
                outputs.log_p_yes, outputs.log_p_no, inputs["labels"], self.args.bpr_weight
            ).detach()
        if prediction_loss_only:
            return loss, None, None
        labels = tuple(inputs.get(name) for name in self.label_names)
        return loss, outputs.scores.detach(), labels if all(x is not None for x in labels) else None


def enable_fsdp_on_cpu(accelerator, args: TrainingArguments) -> bool:
    """
    Turn FSDP on for a multi-process CPU run that asked for it; returns whether it did.

    accelerate 1.15 selects FSDP only for GPU-like backends (`AcceleratorState` keeps `MULTI_CPU` when `cpu=True`), so
    `accelerate launch` with an FSDP config (`ACCELERATE_USE_FSDP=true`) or `--fsdp` plus `--use_cpu true` would
    silently train with DDP. PyTorch's FSDP2 (`fully_shard`) itself runs on CPU with gloo, so this sets the shared
    state to FSDP with the plugin the launcher (or `--fsdp_config`) describes, before the Trainer prepares the model.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    asked = (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or args.fsdp_plugin_args is not None
    )
    if not asked or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**(args.fsdp_plugin_args or {}))
    if plugin.fsdp_version != 2:
        raise ValueError(
            "FSDP on CPU needs FSDP2 (fsdp_version: 2 in the accelerate config; FSDP1 needs a GPU stream)"
        )
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin, state.distributed_type = plugin, DistributedType.FSDP
    logger.info("FSDP%d on CPU: %d processes, gloo", plugin.fsdp_version, state.num_processes)
    return True


def is_fsdp_sharded(model) -> bool:
    """Whether FSDP2 (`fully_shard`) has sharded `model` in place: its parameters are then per-process shards."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


_GATE_KEY = re.compile(r"(^|\.)model\.gate\.")
"""The GATE's weights in a PEFT adapter's keys (`base_model.model.model.gate.cf_gates.0.fc1.weight`); not the LLM's
`mlp.gate_proj`."""


def has_adapter_weights(folder) -> bool:
    """
    Whether `folder` holds a saved adapter's weights (`adapter_model.safetensors`). An `adapter_model.bin` there (a
    pickle, PEFT's `safe_serialization=False`) raises a `ValueError` naming it: ccf-llm reads no pickle, and treating
    the folder as empty would silently train again what it holds.
    """
    folder = Path(folder)
    if (folder / "adapter_model.safetensors").is_file():
        return True
    if (folder / "adapter_model.bin").is_file():
        raise ValueError(
            f"{folder / 'adapter_model.bin'} is a pickle file, which ccf-llm does not read: save the adapter as "
            "safetensors (PEFT's save_pretrained default, safe_serialization=True)"
        )
    return False


def load_adapter_weights(model, folder, keep_missing_fusion: bool = False, skip_gate: bool = False) -> bool:
    """
    Load the adapter saved in `folder` (LoRA and ALG/GATE) into the PEFT-wrapped `model`, renaming the keys of
    adapters saved before the model split (`CCFLlamaForCTR._checkpoint_conversion_mapping`). Returns False, loading
    nothing, where this does not apply: no adapter file there, a model without PEFT, or one FSDP has sharded (a
    pickle `adapter_model.bin` raises: `has_adapter_weights`).
    With `keep_missing_fusion`, fusion weights (ALG/GATE) the file lacks keep their current values: a shared stage 1
    from a `text` run has LoRA only (CoLLM's inject rows start from the TALLRec LoRA); anything else missing raises.
    With `skip_gate`, the file's GATE weights are not loaded and the model's GATE keeps its current values: a shared
    LoRA stage (stage 1 trains LoRA only) gives its LoRA and the ALG that LoRA was trained against, frozen at the first
    run's initialization (ALG's random draws depend on the fusion mode's other modules, so a second run's own ALG
    differs). GATE never reached stage 1's LoRA beyond the constant α = `gate_init_alpha` (`zero_init_gate`), and its
    shape depends on the fusion mode: `token_gate`'s outputs one α per token where `gate`'s outputs one per dimension.
    """
    from peft import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

    if not hasattr(model, "get_base_model") or is_fsdp_sharded(model):
        return False
    if not has_adapter_weights(folder):
        return False
    mapping = getattr(model.get_base_model(), "_checkpoint_conversion_mapping", None)
    loaded = load_peft_weights(str(folder), key_mapping=mapping)
    current = get_peft_model_state_dict(model)
    skipped = {key for key in current if skip_gate and _GATE_KEY.search(key)}
    if skip_gate:
        # the file's GATE keys go too, also where this model has none (`add`) or another shape (`token_gate`)
        loaded = {key: value for key, value in loaded.items() if not _GATE_KEY.search(key)}
    missing = sorted(current.keys() - loaded.keys() - skipped)
    if missing and not (keep_missing_fusion and all("lora_" not in key for key in missing)):
        raise ValueError(
            f"{folder} lacks {len(missing)} adapter weights of this model (first: {missing[:3]})"
        )
    if missing:
        logger.info("%s lacks %d fusion weights: they keep their initialization", folder, len(missing))
    if skipped:
        logger.info("GATE not loaded from %s: its %d weights keep their current values", folder, len(skipped))
    kept = {key: current[key] for key in [*missing, *skipped]}
    set_peft_model_state_dict(model, {**kept, **loaded})
    return True


def save_adapter(model, folder, is_main_process: bool = True) -> None:
    """
    `model.save_pretrained(folder)` for a PEFT-wrapped model, written by the main process. Under FSDP each process
    holds a shard of every weight, so every process must call this: the adapter's weights (LoRA and the
    `modules_to_save` copies, not the frozen base) are all-gathered first, and the file holds whole tensors.
    """
    if not is_fsdp_sharded(model):
        if is_main_process:
            model.save_pretrained(folder)
        return
    from torch.distributed.tensor import DTensor

    full = {
        name: value.full_tensor() if isinstance(value, DTensor) else value
        for name, value in model.state_dict().items()
        if "lora_" in name or ".modules_to_save." in name
    }
    if is_main_process:
        model.save_pretrained(folder, state_dict=full)


def schedule_stages(schedule: str, uses_cf: bool = True) -> tuple[str, ...]:
    """
    The stages `schedule` runs: its `+`-joined `STAGES` (e.g. `lora+fusion`, Table 4's `SCHEDULES`); without CF
    (text mode) there is nothing to fuse: its first stage only.
    """
    stages = tuple(_LEGACY_SCHEDULES.get(schedule, schedule).split("+"))
    if not all(stage in STAGES for stage in stages) or len(set(stages)) != len(stages):
        raise ValueError(
            f"schedule must be distinct stages of {STAGES} joined by '+', e.g. one of {SCHEDULES}; got {schedule!r}"
        )
    return stages if uses_cf else stages[:1]


class DivergenceGuard(TrainerCallback):
    """
    Stops a stage whose training loss, averaged over the last `window` logs, rises more than `tolerance` (relative)
    above `reference` (the loss the stage started from; by default the mean of its first `window` logs). The stage
    then ends early and `CCFTwoStageTrainer` keeps the weights it started with unless validation says otherwise.
    """

    def __init__(self, tolerance: float, reference: float | None = None, window: int = 4):
        self.tolerance, self.reference, self.window = tolerance, reference, window
        self.losses: list[float] = []
        self.diverged_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.losses.append(float(logs["loss"]))
        if len(self.losses) < self.window or (self.reference is None and len(self.losses) < 2 * self.window):
            return
        reference = (
            self.reference if self.reference is not None else float(np.mean(self.losses[: self.window]))
        )
        if float(np.mean(self.losses[-self.window :])) > reference * (1 + self.tolerance):
            self.diverged_at = state.global_step
            control.should_training_stop = True


class _EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping, which may end a stage only once it has trained `min_epochs` epochs."""

    def __init__(self, patience: int, min_epochs: float = 0.0):
        super().__init__(early_stopping_patience=patience)
        self.min_epochs = min_epochs

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if (state.epoch or 0.0) < self.min_epochs:
            control.should_training_stop = False

    def resume_from(self, checkpoint: str | Path):
        """Take the patience counter saved in `checkpoint`'s `trainer_state.json`, so a resumed stage stops where an
        uninterrupted one would (transformers restores callback states only with
        `restore_callback_states_from_checkpoint`, which rebuilds every stateful callback from its saved arguments)."""
        saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        found = saved.get("stateful_callbacks", {}).get(type(self).__name__)
        if found:
            self.early_stopping_patience_counter = found["attributes"]["early_stopping_patience_counter"]


class CCFTwoStageTrainer:
    """
    The training strategy of §3.4 (and the alternatives of Table 4) as one trainer, TRL-style: it takes the bare
    `CCFLlamaForCTR` and a PEFT config (default: LoRA from `args`), then `train()` runs `args.schedule`'s stages in
    order, each a fresh `CCFTrainer` (fresh optimizer and learning-rate schedule; `fusion_learning_rate` in the
    fusion stage) writing to `args.output_dir/stage_<n>_<stage>/`.

    Per stage it owns:

    * **freezing**: only the stage's parameters train (`apply_stage`);
    * **resume**: a stage whose `final/` adapter exists is loaded and skipped; an unfinished one resumes from its
      last checkpoint when `train(resume_from_checkpoint=True)`;
    * **sharing**: `shared_stages={"lora": folder}` loads a finished stage from another run instead of training it
      (e.g. the TALLRec LoRA that CoLLM's stage 2 starts from, or a stage 1 that several rows have in common):
      a LoRA stage gives its LoRA and the frozen ALG that LoRA read, while the GATE keeps this run's initialization
      (`load_adapter_weights(skip_gate=True)`);
    * **early stopping and checkpoint choice** (with `args.early_stopping_patience` and evaluation every
      `eval_steps`): the best validation-AUC checkpoint is kept (the paper's rule); the best-UAUC one is recorded;
    * **the divergence guard**: a stage whose training loss climbs `divergence_tolerance` above where it started is
      stopped (`DivergenceGuard`), and any stage that ends with a lower validation AUC than it started with is
      rolled back to its starting weights, so no stage leaves the model worse on validation than it found it
      (the collapse of stage 2 that CoLLM users report with small backbones).

    `train_dataset` is one dataset or a dict stage -> dataset (e.g. text-only prompts for CoLLM's stage 1).
    `train()` returns, and `self.stage_log` keeps, one record per stage.
    """

    def __init__(
        self,
        model,
        args: CCFTrainingArguments,
        train_dataset,
        eval_dataset=None,
        peft_config=None,
        data_collator=None,
        processing_class=None,
        shared_stages: dict | None = None,
        callbacks: list | None = None,
    ):
        if not isinstance(args, CCFTrainingArguments):
            raise ValueError(
                "CCFTwoStageTrainer needs CCFTrainingArguments (schedule, learning rates, LoRA settings)"
            )
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.stages = stages = schedule_stages(args.schedule, base.config.uses_cf)
        self.model = model if hasattr(model, "peft_config") else add_lora(model, args, peft_config)
        self.args = args
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.data_collator, self.processing_class = data_collator, processing_class
        self.shared_stages = dict(shared_stages or {})
        if unknown := set(self.shared_stages) - set(stages):
            raise ValueError(f"shared_stages names {sorted(unknown)}, not stages of this schedule {stages}")
        if args.early_stopping_patience is not None and (eval_dataset is None or args.eval_strategy == "no"):
            raise ValueError(
                "early_stopping_patience needs an eval_dataset and eval_strategy 'steps' or 'epoch'"
            )
        self.callbacks = list(callbacks or [])
        self.stage_log: list[dict] = []

    def stage_dir(self, number: int, stage: str) -> Path:
        return Path(self.args.output_dir) / f"stage_{number + 1}_{stage}"

    def _stage_args(self, number: int, stage: str) -> CCFTrainingArguments:
        changes = {"stage": stage, "output_dir": str(self.stage_dir(number, stage)), "push_to_hub": False,
                   "resume_from_checkpoint": None}  # fmt: skip
        if self.args.early_stopping_patience is not None:
            changes |= {"load_best_model_at_end": True, "metric_for_best_model": "auc", "greater_is_better": True,
                        "save_strategy": self.args.eval_strategy, "save_steps": self.args.eval_steps}  # fmt: skip
        return dataclasses.replace(self.args, **changes)

    def _train_data(self, stage: str):
        data = self.train_dataset
        return data[stage] if isinstance(data, dict) else data

    def _load(self, folder, skip_gate: bool = False) -> None:
        if not load_adapter_weights(self.model, folder, keep_missing_fusion=True, skip_gate=skip_gate):
            raise ValueError(f"{folder} holds no adapter to load into this PEFT model")

    def _trainable_state(self) -> dict:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def train(self, resume_from_checkpoint: bool = False) -> list[dict]:
        from transformers.trainer_utils import get_last_checkpoint

        self.stage_log, previous_metrics = [], None
        for number, stage in enumerate(self.stages):
            folder = self.stage_dir(number, stage)
            final = folder / "final"
            record = {"stage": stage, "output_dir": str(folder), "rolled_back": False}
            if stage in self.shared_stages:  # a LoRA stage shares its LoRA and ALG, not the GATE
                self._load(self.shared_stages[stage], skip_gate=stage == "lora")
                self.stage_log.append({**record, "shared_from": str(self.shared_stages[stage])})
                previous_metrics = None
                continue
            if resume_from_checkpoint and has_adapter_weights(final):
                self._load(final)
                self.stage_log.append({**record, "loaded": str(final)})
                previous_metrics = None
                continue
            stage_args = self._stage_args(number, stage)
            trainer = CCFTrainer(model=self.model, args=stage_args, train_dataset=self._train_data(stage),
                                 eval_dataset=self.eval_dataset, data_collator=self.data_collator,
                                 processing_class=self.processing_class, callbacks=list(self.callbacks))  # fmt: skip
            start_state = self._trainable_state()
            start_metrics = previous_metrics
            if start_metrics is None and self.eval_dataset is not None:
                start_metrics = trainer.evaluate()
            guard = None
            if self.args.divergence_tolerance is not None:
                reference = start_metrics.get("eval_loss") if start_metrics else None
                guard = DivergenceGuard(self.args.divergence_tolerance, reference)
                trainer.add_callback(guard)
            early = None
            if self.args.early_stopping_patience is not None:
                early = _EarlyStopping(self.args.early_stopping_patience, self.args.early_stopping_min_epochs)
                trainer.add_callback(early)
            last = get_last_checkpoint(str(folder)) if resume_from_checkpoint and folder.is_dir() else None
            if last is not None and early is not None:
                early.resume_from(last)
            if resume_from_checkpoint and last is None:
                logger.info("stage %s: no checkpoint in %s, trained from its beginning", stage, folder)
            start = time.perf_counter()
            trainer.train(resume_from_checkpoint=last)
            record |= {"steps": trainer.state.global_step, "seconds": round(time.perf_counter() - start, 1),
                       "trainable_parameters": trainer.trainable_parameters,
                       "diverged_at_step": guard.diverged_at if guard else None}  # fmt: skip
            end_metrics = trainer.evaluate() if self.eval_dataset is not None else None
            if start_metrics is not None:
                record |= {
                    "start_eval_auc": start_metrics["eval_auc"],
                    "end_eval_auc": end_metrics["eval_auc"],
                }
                if (
                    end_metrics["eval_auc"] < start_metrics["eval_auc"]
                ):  # the stage made the model worse: undo it
                    with torch.no_grad():
                        for name, parameter in self.model.named_parameters():
                            if name in start_state:
                                parameter.copy_(start_state[name])
                    record["rolled_back"] = True
                    end_metrics = start_metrics
            record |= _best_checkpoints(trainer.state)
            save_adapter(self.model, final, stage_args.should_save)
            if stage_args.should_save:
                history = trainer.state.log_history
                curve = [
                    {k: r[k] for k in ("step", "loss", "grad_norm") if k in r} for r in history if "loss" in r
                ]
                evals = [{k: r[k] for k in ("step", "eval_auc", "eval_uauc", "eval_loss") if k in r} for r in history
                         if "eval_auc" in r]  # fmt: skip
                (folder / "stage_log.json").write_text(
                    json.dumps({**record, "train_log": curve, "eval_log": evals}, indent=2) + "\n"
                )
            self.stage_log.append(record)
            previous_metrics = end_metrics
        return self.stage_log


def _best_checkpoints(state) -> dict:
    """The evaluations' best validation AUC and UAUC, with their steps (the checkpoint each selection keeps)."""
    evals = [r for r in state.log_history if "eval_auc" in r]
    if not evals:
        return {}
    by_auc = max(evals, key=lambda r: r["eval_auc"])
    by_uauc = max(evals, key=lambda r: r.get("eval_uauc", float("-inf")))
    return {"best_eval_auc": by_auc["eval_auc"], "best_auc_step": by_auc["step"],
            "best_eval_uauc": by_uauc.get("eval_uauc"), "best_uauc_step": by_uauc["step"],
            "best_checkpoint": state.best_model_checkpoint}  # fmt: skip


__all__ = [
    "CCFTrainer",
    "CCFTwoStageTrainer",
    "DivergenceGuard",
    "SCHEDULES",
    "CCFTrainingArguments",
    "STAGES",
    "add_lora",
    "load_adapter_weights",
    "schedule_stages",
    "apply_stage",
    "compile_decoder_layers",
    "enable_fsdp_on_cpu",
    "is_fsdp_sharded",
    "save_adapter",
]
