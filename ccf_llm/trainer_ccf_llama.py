# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Training CCF-LLM with the Hugging Face Trainer: Eq. 5 and the two-stage schedule of §3.4.

* `CCFTrainingArguments` adds the stage (`lora` = Θ_1, `fusion` = Θ_2, `end_to_end`), the BPR weight k and the
  LoRA settings to `TrainingArguments`.
* `add_lora(model, args)` wraps a `CCFLlamaForCTR` with PEFT LoRA; ALG and GATE (and the CF encoder when it is
  tuned) are PEFT `modules_to_save`, so the adapter folder carries everything training changed.
* `CCFTrainer` freezes all but the stage's parameters, optimizes the model's Eq. 5 loss, stops with a clear error
  on a non-finite loss (the last saved checkpoint stays the last good one), and reports AUC / UAUC through the
  packaged `evaluate` metric. Two stages are two `CCFTrainer`s on the same model: stage 2 starts from stage 1's
  weights with a fresh optimizer (the optimizer only holds what is trainable when it is built).
* `compile_layers=True` compiles each decoder layer of the LLM in place (regional compilation) before training.
"""

from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from .metrics import compute_ctr_metrics

STAGES = ("lora", "fusion", "end_to_end")
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
    bpr_weight: float = field(default=2.0, metadata={"help": "k of Eq. 5"})
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
    compile_layers: bool = field(
        default=False,
        metadata={
            "help": "torch.compile each decoder layer in place (dynamic shapes) before training: fuses the "
            "elementwise work of RMSNorm, RoPE, SiLU and LoRA; pays off once training outlasts the compile "
            "(about 45 s for SmolLM2 on 2 CPU cores)"
        },
    )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.bpr_weight < 0:
            raise ValueError(f"bpr_weight must be >= 0, got {self.bpr_weight}")
        if self.stage == "fusion" and self.fusion_learning_rate is not None:
            self.learning_rate = (
                self.fusion_learning_rate
            )  # ALG/GATE start untrained: they may want a larger step
        if self.label_names is None:
            # `user_id` rides along as a label so UAUC can group rows by user in every fusion mode
            self.label_names = ["labels", "user_id"]
        super().__post_init__()


def add_lora(model, args: CCFTrainingArguments):
    """Wrap `model` with LoRA on `args.lora_target_modules`; ALG/GATE (+ CF encoder) become `modules_to_save`."""
    from peft import LoraConfig, get_peft_model

    modules = [m for m in FUSION_MODULES if hasattr(model, m)]
    if args.train_cf_encoder and hasattr(model, "cf_encoder"):
        modules.append("cf_encoder")
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules),
        modules_to_save=modules or None,
    )
    return get_peft_model(model, config)


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
    for layer in base.llm.get_decoder().layers:
        if getattr(layer, "_compiled_call_impl", None) is None:
            layer.compile(**{"dynamic": True, **compile_kwargs})
            compiled += 1
    return compiled


class CCFTrainer(Trainer):
    """`Trainer` for `CCFLlamaForCTR` (usually PEFT-wrapped): stage freezing, Eq. 5, AUC/UAUC evaluation."""

    def __init__(
        self, model=None, args: CCFTrainingArguments = None, compute_metrics=compute_ctr_metrics, **kwargs
    ):
        if not isinstance(args, CCFTrainingArguments):
            raise ValueError("CCFTrainer needs CCFTrainingArguments (stage, bpr_weight, LoRA settings)")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.config.bpr_weight = args.bpr_weight  # the config records the k the model was trained with
        self.trainable_parameters = apply_stage(model, args.stage, args.train_cf_encoder)
        if args.compile_layers:
            compile_decoder_layers(model)
        super().__init__(model=model, args=args, compute_metrics=compute_metrics, **kwargs)

    def _model_inputs(self, inputs: dict) -> dict:
        return {k: v for k, v in inputs.items() if k != "user_id"}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**self._model_inputs(inputs))
        loss = outputs.loss
        if model.training and not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step}: training stopped; the last "
                f"checkpoint in {self.args.output_dir} is the last good one (lower the learning rate or use bf16)"
            )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**self._model_inputs(inputs))
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        labels = tuple(inputs.get(name) for name in self.label_names)
        return loss, outputs.scores.detach(), labels if all(x is not None for x in labels) else None


__all__ = [
    "CCFTrainer",
    "CCFTrainingArguments",
    "STAGES",
    "add_lora",
    "apply_stage",
    "compile_decoder_layers",
]
