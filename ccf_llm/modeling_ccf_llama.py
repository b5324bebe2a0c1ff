# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""PyTorch CCF-LLM: a decoder LLM that reads a hybrid prompt whose item title tokens carry fused CF embeddings.

Paper: Liu, Zhang, Dong, Fang. "Collaborative Cross-modal Fusion with Large Language Model for Recommendation",
CIKM'24. Section numbers and equations in the docstrings refer to it.

Split as transformers splits LLaVA: `CCFLlamaModel` owns the CF encoder (Eq. 1), ALG (Eq. 2), the GATE (Eq. 3-4) and
the decoder, and turns a hybrid prompt into hidden states (`embed_hybrid_prompt` is the one home of the fusion);
`CCFLlamaForCTR` adds the LM head, the click score (§3.4), the Eq. 5 loss for plain-PyTorch loops and prefix-cached
ranking. Checkpoints keep the key layout of the single class they had before the split (`_checkpoint_conversion_mapping`),
so old checkpoints and PEFT adapters load and new ones load in older code.

This file imports only torch, transformers and sibling modules (configuration files, the loss and the SASRec
encoder), which `register_for_auto_class` copies along, so a saved checkpoint loads with `trust_remote_code=True`
without the `ccf_llm` package.
"""

import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, DynamicCache, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import ModelOutput

from .configuration_ccf_llama import ITEM_TOKEN, USER_TOKEN, CCFLlamaConfig
from .configuration_collaborative import SASRecConfig
from .loss_ccf_llama import DEFAULT_BPR_WEIGHT, ccf_ctr_loss
from .modeling_collaborative import SASRecEncoder

_LEGACY_PREFIXES = (
    ("llm.lm_head", "lm_head"),
    ("llm.model", "model.language_model"),
    ("cf_encoder", "model.cf_encoder"),
    ("alignment", "model.alignment"),
    ("gate", "model.gate"),
)
"""State-dict prefixes of the single class before the LLaVA-style split -> where those weights live now."""


@dataclass
class CCFCTROutput(ModelOutput):
    """
    Output of [`CCFLlamaForCTR`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Eq. 5 (`ccf_ctr_loss`) with the paper's k = 2; `CCFTrainer` computes it with its own `bpr_weight`.
        logits (`torch.FloatTensor` of shape `(batch_size, 2)`):
            The LM-head logits of the "Yes" (column 0) and "No" (column 1) tokens at the answer position.
        log_p_yes (`torch.FloatTensor` of shape `(batch_size,)`):
            log P("Yes" | prompt) under the softmax over the full vocabulary (`p_yes` is its exp).
        log_p_no (`torch.FloatTensor` of shape `(batch_size,)`):
            log P("No" | prompt) under the softmax over the full vocabulary (`p_no` is its exp).
        scores (`torch.FloatTensor` of shape `(batch_size,)`):
            The click score p_yes / (p_yes + p_no) ("normalized p_yes", §4.1), the prediction used for AUC.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    log_p_yes: torch.FloatTensor | None = None
    log_p_no: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None

    @property
    def p_yes(self) -> torch.FloatTensor:
        """P("Yes" | prompt)."""
        return self.log_p_yes.exp()

    @property
    def p_no(self) -> torch.FloatTensor:
        """P("No" | prompt)."""
        return self.log_p_no.exp()


class CCFMLP(nn.Module):
    """
    Two-layer perceptron `Linear → act → Linear`, the "MLP" of Eq. 2 and Eq. 3. It computes in its own weights'
    dtype (inputs are cast to it; autocast is off inside it, even under `Trainer(bf16=True)`'s autocast), so
    trainable fusion weights may stay fp32 beside a bf16 LLM.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _without_autocast(x.device):
            return self.fc2(self.act(self.fc1(x.to(self.fc1.weight.dtype))))


def _without_autocast(device: torch.device):
    """Autocast off on `device` (fp32 fusion weights compute in fp32 also under `Trainer(bf16=True)`); a no-op where
    the device has no autocast (e.g. meta tensors)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


# Θ_E, Θ_A and Θ_G (ENC, ALG, GATE) load and compute in fp32 beside a bf16 LLM, as they train (see
# CCFCollaborativeEncoder)
FP32_MODULES = ("cf_encoder", "alignment", "gate")


class CCFCollaborativeEncoder(nn.Module):
    """
    ENC of Eq. 1 (Θ_E), one entry per CF source: the item table and either a user table (MF, LightGCN) or a
    sequential user encoder over the row's latest items (SASRec, reading `history` through the same item table).
    Row 0 of each table is the padding row. `forward(ids, kind, history)` returns one `(..., l_s)` tensor per source,
    standardized by `config.cf_input_shifts` and `cf_input_scales` when set; when a sequential source's users are
    centered, a row without history (all padding) gets the mean user vector, 0. ENC computes in fp32 whatever the
    LLM's dtype (`_keep_in_fp32_modules_strict`, and autocast is off inside it): SASRec's user vectors differ by
    ~1e-4 of their size on ML-1M, below bf16's resolution.
    """

    def __init__(self, config: CCFLlamaConfig):
        super().__init__()
        self.config = config  # the model's config object: `cf_input_scales` is read at call time
        dims = config.cf_embedding_dims
        sequential = config.cf_sequential_encoders or [None] * len(dims)
        self.user_encoders = nn.ModuleList(
            SASRecEncoder(SASRecConfig.from_dict(seq))
            if seq
            else nn.Embedding(config.num_users + 1, d, padding_idx=0)
            for d, seq in zip(dims, sequential, strict=True)
        )
        self.item_embeddings = nn.ModuleList(
            nn.Embedding(config.num_items + 1, d, padding_idx=0) for d in dims
        )

    def forward(
        self, ids: torch.LongTensor, kind: str, history: torch.LongTensor | None = None
    ) -> list[torch.Tensor]:
        shifts, scales = self.config.cf_input_shifts, self.config.cf_input_scales
        side = 1 if kind == "item" else 0
        outputs = []
        for s, (user, items) in enumerate(zip(self.user_encoders, self.item_embeddings, strict=True)):
            sequential = kind == "user" and not isinstance(user, nn.Embedding)
            with _without_autocast(items.weight.device):
                x = items(ids) if kind == "item" else user(history, items) if sequential else user(ids)
            centered = shifts is not None and shifts[s][side] is not None
            if centered:
                x = x - x.new_tensor(shifts[s][side])
            if scales is not None:
                x = x / scales[s][side]
            if sequential and centered:  # no history: the mean user (standardized 0), as in the statistics
                x = x.masked_fill((history == 0).all(-1, keepdim=True), 0.0)
            outputs.append(x)
        return outputs

    def train(self, mode: bool = True) -> "CCFCollaborativeEncoder":
        """
        Training mode only while Θ_E is being tuned (some parameter requires grad): a frozen, pretrained ENC stays in
        eval mode when the model trains, so SASRec's dropout does not add to the CF vectors during LLM training a
        noise that validation and test never see (on ML-1M it is as large as the spread between users). It is
        decided when `train()` is called (the Trainer calls it every step): set `requires_grad` first.
        """
        return super().train(mode and any(p.requires_grad for p in self.parameters()))

    @torch.no_grad()
    def standardization(
        self, cf_history: torch.LongTensor | None = None, batch_size: int = 4096
    ) -> tuple[list[list[list[float]]], list[list[float]]]:
        """
        `(shifts, scales)` for `config.cf_input_shifts` / `cf_input_scales`: per source and side, the mean CF vector
        and the RMS of the vectors around it. Tables: over their rows (padding row excluded). A sequential user
        encoder: over its outputs for the rows of `cf_history` `(rows, K)` that hold an item, e.g. the training rows'
        latest items (`CCFLlamaProcessor.cf_history`), which it needs. Rows without history are left out: SASRec
        gives them one distant vector (on ML-1M 4% of rows carry 99.9% of the variance) that would shrink every
        other user's differences to ~1e-3 of ALG's input scale (spread 2.5e-4 against 0.33).
        """

        def moments(x: torch.Tensor) -> tuple[list[float], float]:
            x = x.detach().float()
            mean = x.mean(0)
            return mean.tolist(), max((x - mean).pow(2).mean().sqrt().item(), 1e-12)

        shifts, scales = [], []
        for s, (user, items) in enumerate(zip(self.user_encoders, self.item_embeddings, strict=True)):
            if isinstance(user, nn.Embedding):
                user_vectors = user.weight[1:]
            elif cf_history is None:
                raise ValueError(
                    f"CF source {s} computes user vectors from the history: standardizing them needs cf_history "
                    "(the training rows' latest items, CCFLlamaProcessor.cf_history)"
                )
            else:
                cf_history = torch.as_tensor(cf_history)
                cf_history = cf_history[(cf_history != 0).any(-1)]  # rows without history map to the mean
                if len(cf_history) == 0:
                    raise ValueError(
                        f"CF source {s}: no row of cf_history has an item to standardize users over"
                    )
                training = user.training
                user.eval()  # no dropout in the statistics
                user_vectors = torch.cat([user(h, items) for h in cf_history.split(batch_size)])
                user.train(training)
            (user_shift, user_scale), (item_shift, item_scale) = (
                moments(user_vectors),
                moments(items.weight[1:]),
            )
            shifts.append([user_shift, item_shift])
            scales.append([user_scale, item_scale])
        return shifts, scales

    def load_tables(self, user_embeddings, item_embeddings):
        """
        Copy pretrained CF embeddings (ENC's output, Eq. 1): one `(num_users + 1, l_s)` user table (`None` for a
        sequential source) and one `(num_items + 1, l_s)` item table per source; a single tensor for one source.
        """
        users = [user_embeddings] if isinstance(user_embeddings, torch.Tensor) else list(user_embeddings)
        items = [item_embeddings] if isinstance(item_embeddings, torch.Tensor) else list(item_embeddings)
        for name, given, tables in (
            ("user", users, self.user_encoders),
            ("item", items, self.item_embeddings),
        ):
            if len(given) != len(tables):
                raise ValueError(f"got {len(given)} {name} embedding tables for {len(tables)} CF sources")
            for s, (weight, table) in enumerate(zip(given, tables, strict=True)):
                if not isinstance(table, nn.Embedding):
                    if weight is not None:
                        raise ValueError(
                            f"CF source {s} encodes users from their history: pass None as its user table"
                        )
                    continue
                if weight is None or tuple(weight.shape) != tuple(table.weight.shape):
                    raise ValueError(
                        f"{name} embeddings of CF source {s} have shape "
                        f"{None if weight is None else tuple(weight.shape)}, expected {tuple(table.weight.shape)} "
                        f"(num_{name}s + 1 rows, row 0 = padding)"
                    )
                if not torch.isfinite(weight).all():
                    bad = (~torch.isfinite(weight)).any(-1).nonzero().flatten()
                    raise ValueError(
                        f"{name} embeddings of CF source {s} hold NaN or inf in {len(bad)} rows (first: "
                        f"{bad[:5].tolist()}): the CF model did not train cleanly"
                    )
                with torch.no_grad():
                    table.weight.copy_(weight)

    def load_cf_models(self, cf_models):
        """Copy pretrained CF backbones (MFModel, LightGCNModel, SASRecModel), one per source."""
        users, items = [], []
        for s, cf_model in enumerate(cf_models):
            if hasattr(cf_model, "encode_history"):
                state = cf_model.encoder.state_dict()
                if bad := [
                    k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()
                ]:
                    raise ValueError(f"the sequential CF encoder of source {s} holds NaN or inf in {bad}")
                self.user_encoders[s].load_state_dict(state)
                users.append(None)
                items.append(cf_model.item_embeddings.weight)
            else:
                user_table, item_table = cf_model.export_cf_embeddings()
                users.append(user_table)
                items.append(item_table)
        self.load_tables(users, items)


class CCFAlignment(nn.Module):
    """ALG of Eq. 2: one MLP per CF source mapping `x^CF ∈ R^l` to the LLM embedding space `R^d`."""

    def __init__(self, config: CCFLlamaConfig):
        super().__init__()
        d = config.text_config.hidden_size
        hidden = config.alignment_hidden_size or d
        self.projections = nn.ModuleList(
            CCFMLP(dim, hidden, d, config.projector_hidden_act) for dim in config.cf_embedding_dims
        )

    def forward(self, cf_embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
        return [projection(x) for projection, x in zip(self.projections, cf_embeddings, strict=True)]


class CCFGate(nn.Module):
    """
    GATE of Eq. 3 and the fusion of Eq. 4 / Eq. 7.

    For each CF source s: `α_s = MLP(x̃_i^{CF_s}; Θ_G1) + MLP(x_i^SM[t]; Θ_G2)`, and the fused title token is
    `x̃_i[t] = x_i^SM[t] + Σ_s α_s ⊙ x̃_i^{CF_s}`. α's width is the fusion mode's `gate_width`: `R^d` (`gate`), `R`
    (`token_gate`, Fig. 3a "α ∈ R"), or no MLPs and α = 1 (`add`, Fig. 3a "α = 1").
    """

    def __init__(self, config: CCFLlamaConfig):
        super().__init__()
        d = config.text_config.hidden_size
        hidden = config.gate_hidden_size or d
        self.alpha_size = config.fusion.alpha_size(d)
        n = config.num_cf_sources if self.alpha_size is not None else 0
        act = config.projector_hidden_act
        self.cf_gates = nn.ModuleList(CCFMLP(d, hidden, self.alpha_size, act) for _ in range(n))
        self.semantic_gates = nn.ModuleList(CCFMLP(d, hidden, self.alpha_size, act) for _ in range(n))
        for branch, mlps in (("cf", self.cf_gates), ("semantic", self.semantic_gates)):
            for mlp in mlps:  # set by _init_weights when config.zero_init_gate: α = config.gate_init_alpha
                mlp.fc2._ccf_gate_output = branch

    def gate_weights(
        self, semantic: torch.Tensor, aligned_cf: list[torch.Tensor], index: torch.LongTensor | None = None
    ) -> list[torch.Tensor]:
        """
        The fusion weights α_s of Eq. 3, one `(N, d)` (or `(N, 1)`) tensor per CF source, for `N` title tokens
        `semantic` `(N, d)`. `aligned_cf` holds one row per token or, with `index` `(N,)`, one row per distinct
        item (`index` maps each token to its item's row): MLP(x̃^CF; Θ_G1) then runs once per item, not per token.
        """
        if self.alpha_size is None:
            return [torch.ones_like(semantic[..., :1]) for _ in aligned_cf]
        return [
            _rows(cf_gate(x), index) + semantic_gate(semantic)
            for cf_gate, semantic_gate, x in zip(self.cf_gates, self.semantic_gates, aligned_cf, strict=True)
        ]

    def forward(
        self, semantic: torch.Tensor, aligned_cf: list[torch.Tensor], index: torch.LongTensor | None = None
    ) -> torch.Tensor:
        fused = semantic
        for alpha, x in zip(self.gate_weights(semantic, aligned_cf, index), aligned_cf, strict=True):
            fused = fused + alpha * _rows(x, index)
        return fused


def _rows(x: torch.Tensor, index: torch.LongTensor | None) -> torch.Tensor:
    # index_select, not x[index]: the backward of advanced indexing accumulates repeated rows with
    # `index_put_(accumulate=True)`, which on CPU adds in a thread-dependent order (nondeterministic training)
    return x if index is None else torch.index_select(x, 0, index)


def sum_cf_sources(features: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 7 for a placeholder token: the sum over CF sources of their aligned features `Σ_s ALG_s(x^{CF_s})`."""
    return torch.stack(features).sum(0)


def _renamed(new, old, new_name: str, old_name: str):
    """`new`, or the value of its deprecated keyword `old` with a FutureWarning."""
    if old is None:
        return new
    if new is not None:
        raise ValueError(f"pass {new_name}= only ({old_name}= is its deprecated name)")
    warnings.warn(
        f"{old_name}= is deprecated: pass {new_name}= (token-aligned item ids)", FutureWarning, stacklevel=3
    )
    return old


class CCFLlamaPreTrainedModel(PreTrainedModel):
    config: CCFLlamaConfig
    config_class = CCFLlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    # anchored patterns, so the LLM's `mlp.gate_proj` stays in the LLM's dtype
    _keep_in_fp32_modules_strict = [rf"(^|\.){name}\." for name in FP32_MODULES]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Trainer: the loss is a per-batch mean and forward takes no `num_items_in_batch`.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        super()._init_weights(module)
        branch = getattr(module, "_ccf_gate_output", None)
        if branch is not None and self.config.zero_init_gate:
            # α = MLP(x^CF) + MLP(x^SM) starts at the constant gate_init_alpha: zero output weights, and the CF
            # branch's output bias at gate_init_alpha (0: titles read as pure text until the GATE is trained)
            init.zeros_(module.weight)
            init.constant_(module.bias, self.config.gate_init_alpha if branch == "cf" else 0.0)


class CCFLlamaModel(CCFLlamaPreTrainedModel):
    """
    The CCF-LLM base model (§3.2-3.3): the decoder LLM (`language_model`, without its head) reading the hybrid
    prompt, whose `inputs_embeds` `embed_hybrid_prompt` builds from the CF encoder, ALG and the GATE. Which of these
    exist is the fusion mode's row of `FUSION_MODE_TABLE`. Returns the decoder's hidden states.
    """

    def __init__(self, config: CCFLlamaConfig):
        super().__init__(config)
        if type(config.text_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ValueError(
                f"text_config of model_type {config.text_config.model_type!r} cannot be built as a causal LM, "
                "so CCF-LLM cannot score answers with it"
            )
        self.language_model = AutoModel.from_config(config.text_config)
        if not isinstance(self.language_model.get_input_embeddings(), nn.Embedding):
            raise ValueError(
                f"text_config of model_type {config.text_config.model_type!r} has no token-embedding table "
                f"(got {type(self.language_model.get_input_embeddings()).__name__}); CCF-LLM needs one to build "
                "inputs_embeds"
            )
        fusion = config.fusion
        if fusion.uses_cf:
            self.cf_encoder = CCFCollaborativeEncoder(config)
            self.cf_encoder.requires_grad_(
                False
            )  # Θ_E is pretrained; CCFTrainingArguments.train_cf_encoder tunes it
            self.alignment = CCFAlignment(config)
        if fusion.has_gate:
            self.gate = CCFGate(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_cf_features(
        self, ids: torch.LongTensor, kind: str, cf_history: torch.LongTensor | None = None
    ) -> list[torch.Tensor]:
        """Eq. 1 + 2: `ALG_s(ENC_s(ids))` for each CF source s, `(..., d)` each; `kind` is `"user"` or `"item"`."""
        return self.alignment(self.cf_encoder(ids, kind, cf_history))

    def get_placeholder_mask(
        self, input_ids, attention_mask=None, user_ids=None, token_item_ids=None, cf_history=None
    ):
        """
        The `(B, L)` positions that receive the user feature and the item CF features (title tokens, or the item
        placeholders in `inject` mode) as two `(B, L)` bool tensors (or None), after checking that the CF inputs (shaped
        as in `embed_hybrid_prompt`) match the prompt: a ValueError names the problem otherwise. `(None, None)` where
        the prompt carries no CF signal.
        """
        cfg, fusion = self.config, self.config.fusion
        user_slots = input_ids == cfg.user_token_id if cfg.user_token_id is not None else None
        item_slots = input_ids == cfg.item_token_id if cfg.item_token_id is not None else None
        if not fusion.uses_cf:
            if user_ids is not None or token_item_ids is not None:
                raise ValueError(
                    f"fusion_mode={cfg.fusion_mode!r} uses no collaborative inputs, but user_ids/token_item_ids were given"
                )
            for name, slots in (("user", user_slots), ("item", item_slots)):
                if slots is not None and slots.any():
                    raise ValueError(
                        f"fusion_mode={cfg.fusion_mode!r} but the prompt contains {name} placeholder tokens"
                    )
            return None, None
        if user_ids is not None:
            self._check_users(input_ids, user_slots, user_ids, cf_history)
        elif user_slots is not None and user_slots.any():
            raise ValueError("the prompt contains the user placeholder token but no user_ids were given")
        if token_item_ids is None:
            if item_slots is not None and item_slots.any():
                raise ValueError(
                    "the prompt contains item placeholder tokens but no token_item_ids were given"
                )
            return (user_slots if user_ids is not None else None), None
        if token_item_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_item_ids must be aligned with input_ids, shape {tuple(input_ids.shape)}, got "
                f"{tuple(token_item_ids.shape)}"
            )
        bad = (token_item_ids < 0) | (token_item_ids > cfg.num_items)
        if bad.any():
            raise ValueError(
                f"item ids out of range 1..{cfg.num_items} (0 = no item): {token_item_ids[bad][:10].tolist()}"
            )
        marked = token_item_ids > 0
        if attention_mask is not None and (marked & (attention_mask == 0)).any():
            raise ValueError("token_item_ids mark padding positions (attention_mask == 0)")
        if fusion.item_placeholder:
            slots = item_slots if item_slots is not None else torch.zeros_like(marked)
            if (slots != marked).any():
                raise ValueError(
                    f"fusion_mode={cfg.fusion_mode!r} needs an item id exactly at each item placeholder token: "
                    f"{int(slots.sum())} placeholders but {int(marked.sum())} positions with item ids, "
                    f"{int((slots & ~marked).sum())} placeholders without an id"
                )
        elif item_slots is not None and item_slots.any():
            raise ValueError(
                f"fusion_mode={cfg.fusion_mode!r} fuses CF embeddings into title tokens, but the prompt contains "
                f"{int(item_slots.sum())} item placeholder tokens (only 'inject' mode uses them)"
            )
        return (user_slots if user_ids is not None else None), marked

    def _check_users(self, input_ids, user_slots, user_ids, cf_history):
        cfg = self.config
        if user_ids.shape != input_ids.shape[:1]:
            raise ValueError(
                f"user_ids must have shape (batch_size,) = {tuple(input_ids.shape[:1])}, got {tuple(user_ids.shape)}"
            )
        if user_slots is None:
            raise ValueError("user_ids were given but config.user_token_id is not set")
        counts = user_slots.sum(-1)
        if (counts != 1).any():
            rows = torch.nonzero(counts != 1).flatten().tolist()
            raise ValueError(
                f"each prompt needs exactly one user placeholder for its user id; rows {rows[:10]} have "
                f"{counts[rows[:10]].tolist()}"
            )
        bad = (user_ids < 1) | (user_ids > cfg.num_users)
        if bad.any():
            raise ValueError(f"user ids out of range 1..{cfg.num_users}: {user_ids[bad][:10].tolist()}")
        if not cfg.max_cf_history:
            return
        if cf_history is None:
            raise ValueError(
                "a sequential CF source (SASRec) encodes users from cf_history: pass cf_history="
            )
        if (
            cf_history.ndim != 2
            or cf_history.shape[0] != input_ids.shape[0]
            or cf_history.shape[1] > cfg.max_cf_history
        ):
            raise ValueError(
                f"cf_history must have shape (batch_size, <= {cfg.max_cf_history}), got {tuple(cf_history.shape)}"
            )
        if ((cf_history < 0) | (cf_history > cfg.num_items)).any():
            raise ValueError(f"cf_history item ids out of range 0..{cfg.num_items}")

    def embed_hybrid_prompt(
        self,
        input_ids: torch.LongTensor,
        user_ids: torch.LongTensor | None = None,
        token_item_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cf_history: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """
        The mapping and fusion phases of §3.3 (Eq. 1-4 and 7): `inputs_embeds` of shape `(batch_size, seq_len, d)`.

        * natural-language tokens → the LLM's input embeddings;
        * the user placeholder `[User_u]` → `Σ_s ALG_s(x_u^{CF_s})` (Eq. 2, 7);
        * title tokens (modes that mark titles) → `x_SM[t] + Σ_s α_s ⊙ ALG_s(x_i^{CF_s})` (Eq. 3, 4, 7); in `inject`
          mode the item placeholders → `Σ_s ALG_s(x_i^{CF_s})` and titles stay text; in `text` mode nothing changes.

        Args:
            input_ids: `(batch_size, seq_len)` token ids of the hybrid prompt.
            user_ids: `(batch_size,)` user id of each prompt, replacing its single user placeholder.
            token_item_ids: `(batch_size, seq_len)`, aligned with `input_ids`: the item id each position belongs to
                (every title token in the modes that mark titles, the item placeholder in `inject` mode), 0 elsewhere.
            attention_mask: `(batch_size, seq_len)`, used to check that no item id sits on padding.
            cf_history: `(batch_size, K)` the latest K history items, left-padded with 0 (SASRec sources only).
        """
        user_slots, item_slots = self.get_placeholder_mask(
            input_ids, attention_mask, user_ids, token_item_ids, cf_history
        )
        embeds = self.get_input_embeddings()(input_ids)
        if user_slots is not None:
            user_vec = sum_cf_sources(self.get_cf_features(user_ids, "user", cf_history)).to(embeds.dtype)
            embeds = torch.where(user_slots.unsqueeze(-1), user_vec.unsqueeze(1), embeds)
        if item_slots is not None:
            # ALG (and GATE's CF branch) run once per distinct item, then are gathered for its N title tokens
            items, index = torch.unique(token_item_ids[item_slots], return_inverse=True)
            aligned_items = self.get_cf_features(items, "item")  # per source: (distinct items, d)
            if self.config.fusion.marks_titles:
                values = self.gate(embeds[item_slots], aligned_items, index)  # in the fusion weights' dtype
            else:
                values = _rows(sum_cf_sources(aligned_items), index)
            embeds = embeds.masked_scatter(item_slots.unsqueeze(-1), values.to(embeds.dtype))
        return embeds

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        user_ids: torch.LongTensor | None = None,
        token_item_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cf_history: torch.LongTensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
    ) -> BaseModelOutputWithPast:
        """
        The decoder's hidden states over the hybrid prompt (arguments as in [`CCFLlamaForCTR.forward`]). With
        `past_key_values`, `input_ids` continue a cached prefix: `attention_mask` then covers prefix and continuation,
        and `position_ids` must be given.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        own_mask = attention_mask[:, -input_ids.shape[1] :]
        inputs_embeds = self.embed_hybrid_prompt(input_ids, user_ids, token_item_ids, own_mask, cf_history)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )


class CCFLlamaForCTR(CCFLlamaPreTrainedModel):
    """
    CCF-LLM for click-through-rate prediction (§3): [`CCFLlamaModel`] plus the LM head, applied to the last real
    position only, giving log p_yes, log p_no and the click score p_yes / (p_yes + p_no) (§3.4). `score_candidates`
    ranks many candidates that share a prompt prefix with a key/value cache.
    """

    _checkpoint_conversion_mapping = {rf"^{re.escape(old)}\.": f"{new}." for old, new in _LEGACY_PREFIXES}
    """Old state-dict prefixes -> new ones; PEFT's `PeftModel.from_pretrained` applies it to saved adapters."""
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: CCFLlamaConfig):
        super().__init__(config)
        self.model = CCFLlamaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    # the base model's parts, as LLaVA exposes them
    language_model = property(lambda self: self.model.language_model)
    cf_encoder = property(lambda self: self.model.cf_encoder)
    alignment = property(lambda self: self.model.alignment)
    gate = property(lambda self: self.model.gate)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module):
        self.lm_head = value

    def embed_hybrid_prompt(self, *args, **kwargs) -> torch.Tensor:
        """[`CCFLlamaModel.embed_hybrid_prompt`]."""
        return self.model.embed_hybrid_prompt(*args, **kwargs)

    def set_cf_embeddings(self, user_embeddings, item_embeddings):
        """Copy pretrained CF tables into the CF encoder (`CCFCollaborativeEncoder.load_tables`)."""
        self.model.cf_encoder.load_tables(user_embeddings, item_embeddings)

    def load_cf_models(self, cf_models):
        """Copy pretrained CF backbones into the CF encoder (`CCFCollaborativeEncoder.load_cf_models`)."""
        self.model.cf_encoder.load_cf_models(cf_models)

    def fit_cf_standardization(self, cf_history: torch.LongTensor | None = None) -> None:
        """
        Center and scale what ALG reads (Eq. 2's input): sets `config.cf_input_shifts` to the mean CF vector and
        `config.cf_input_scales` to the RMS around it, per source and side (`CCFCollaborativeEncoder.standardization`).
        A sequential source (SASRec) needs `cf_history`, the training rows' latest items, to standardize its users.
        """
        if not isinstance(self.model.cf_encoder, CCFCollaborativeEncoder):  # PEFT's copy (modules_to_save)
            raise ValueError(
                "fit_cf_standardization must run before add_lora(..., train_cf_encoder=True): PEFT's trainable copy "
                "of the CF encoder holds its own copy of the config and would never read the new statistics"
            )
        self.config.cf_input_shifts, self.config.cf_input_scales = None, None  # the encoder's raw outputs
        self.config.cf_input_shifts, self.config.cf_input_scales = self.model.cf_encoder.standardization(
            cf_history
        )

    def _check_answer_ids(self):
        if self.config.yes_token_id is None or self.config.no_token_id is None:
            raise ValueError(
                "config.yes_token_id and config.no_token_id must be set (see CCFLlamaForCTR.from_llm)"
            )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        user_ids: torch.LongTensor | None = None,
        token_item_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        cf_history: torch.LongTensor | None = None,
        item_ids: torch.LongTensor | None = None,
    ) -> CCFCTROutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`):
                The tokenized hybrid prompt, ending with the answer cue (`#Answer:`). Left or right padding.
            attention_mask (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*):
                1 for real tokens, 0 for padding.
            user_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                The user of each prompt; replaces its user placeholder (not used in `text` mode).
            token_item_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*):
                Aligned with `input_ids`: the item each title token (or, in `inject` mode, each item placeholder)
                belongs to; 0 elsewhere.
            position_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*):
                Defaults to `cumsum(attention_mask) - 1`, so padding never shifts positions.
            labels (`torch.Tensor` of shape `(batch_size,)`, *optional*):
                1 for a click (rating above the threshold), 0 otherwise; gives `loss` (Eq. 5, `ccf_ctr_loss` with
                the paper's k = 2; `CCFTrainer` uses `CCFTrainingArguments.bpr_weight`).
            cf_history (`torch.LongTensor` of shape `(batch_size, K)`, *optional*):
                The latest K history items, left-padded with 0, for sequential CF sources (SASRec).
            item_ids: deprecated name of `token_item_ids`.
        """
        self._check_answer_ids()
        token_item_ids = _renamed(token_item_ids, item_ids, "token_item_ids", "item_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.model(
            input_ids, attention_mask, user_ids, token_item_ids, position_ids, cf_history
        ).last_hidden_state
        # The answer position is the last real token: the LM head runs on it alone, never on B x L x V.
        seq = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (seq * attention_mask.to(seq.dtype)).argmax(-1)
        output = self.answer(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        if labels is not None:
            output.loss = ccf_ctr_loss(output.log_p_yes, output.log_p_no, labels, DEFAULT_BPR_WEIGHT)
        return output

    def answer(self, answer_hidden: torch.Tensor) -> CCFCTROutput:
        """
        §3.4: the Yes/No logits, their log-probabilities under the full-vocabulary softmax and the click score
        p_yes / (p_yes + p_no), from the last hidden state at each answer position `(B, d)`.
        """
        vocab_logits = self.lm_head(answer_hidden)
        log_probs = torch.log_softmax(vocab_logits.float(), dim=-1)
        answer_ids = torch.tensor(
            [self.config.yes_token_id, self.config.no_token_id], device=log_probs.device
        )
        log_p = log_probs[:, answer_ids]
        return CCFCTROutput(
            logits=vocab_logits[:, answer_ids].float(),
            log_p_yes=log_p[:, 0],
            log_p_no=log_p[:, 1],
            scores=torch.sigmoid(log_p[:, 0] - log_p[:, 1]),
        )

    @torch.no_grad()
    # eager even where the decoder layers are compiled (`compile_decoder_layers`): each layer's cache entry is a guard,
    # so every layer recompiled until dynamo's recompile limit and the rest ran eagerly anyway
    @torch.compiler.set_stance("force_eager")
    def score_candidates(
        self,
        prefix_input_ids: torch.LongTensor,
        input_ids: torch.LongTensor,
        prefix_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_token_item_ids: torch.LongTensor | None = None,
        token_item_ids: torch.LongTensor | None = None,
        user_ids: torch.LongTensor | None = None,
        cf_history: torch.LongTensor | None = None,
        prefix_index: torch.LongTensor | None = None,
        batch_size: int = 64,
        prefix_item_ids: torch.LongTensor | None = None,
        item_ids: torch.LongTensor | None = None,
    ) -> CCFCTROutput:
        r"""
        Click scores of many candidate items that share prompt prefixes, e.g. all candidates of a user (serving).

        Each prefix (history and user feature, everything before the target item) runs through the LLM once; its
        key/value cache (transformers `DynamicCache`) is then gathered for every candidate, and the candidates'
        suffixes (target title, question, answer cue) run against it `batch_size` at a time. The scores equal those
        of `forward` on the full prompts (up to floating-point reassociation). `CCFLlamaProcessor.ranking_inputs`
        builds the inputs. It runs eagerly, compiled decoder layers included (a `DynamicCache` recompiles them).

        Args:
            prefix_input_ids (`torch.LongTensor` of shape `(prefixes, P)`): the shared prefixes, left-padded.
            input_ids (`torch.LongTensor` of shape `(candidates, S)`): the candidates' suffixes, right-padded.
            prefix_attention_mask / attention_mask: 1 for real tokens, 0 for padding.
            prefix_token_item_ids / token_item_ids: item ids aligned with the prefixes / suffixes (see `forward`).
            user_ids (`(prefixes,)`), cf_history (`(prefixes, K)`): the user of each prefix.
            prefix_index (`torch.LongTensor` of shape `(candidates,)`): the prefix each candidate continues;
                may be omitted with a single prefix.
            batch_size (`int`): candidates per LLM call, bounding memory.
            prefix_item_ids / item_ids: deprecated names of `prefix_token_item_ids` / `token_item_ids`.

        Returns:
            [`CCFCTROutput`] without `loss`, one row per candidate in input order.
        """
        prefix_token_item_ids = _renamed(
            prefix_token_item_ids, prefix_item_ids, "prefix_token_item_ids", "prefix_item_ids"
        )
        token_item_ids = _renamed(token_item_ids, item_ids, "token_item_ids", "item_ids")
        device = self.get_input_embeddings().weight.device
        n_prefixes, n = prefix_input_ids.shape[0], input_ids.shape[0]
        if prefix_index is None:
            if n_prefixes != 1:
                raise ValueError(
                    f"{n_prefixes} prefixes were given: pass prefix_index to say which each candidate continues"
                )
            prefix_index = torch.zeros(n, dtype=torch.long)
        if prefix_index.shape != (n,) or (n and (prefix_index.min() < 0 or prefix_index.max() >= n_prefixes)):
            raise ValueError(f"prefix_index must have shape ({n},) with values in 0..{n_prefixes - 1}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n == 0:
            empty = torch.zeros(0, device=device)
            return CCFCTROutput(logits=empty.reshape(0, 2), log_p_yes=empty, log_p_no=empty, scores=empty)
        if prefix_attention_mask is None:
            prefix_attention_mask = torch.ones_like(prefix_input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if (attention_mask[:, 0] == 0).any() or (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
            raise ValueError(
                "candidate suffixes must be non-empty and right-padded (attention_mask 1...1 0...0)"
            )
        self._check_answer_ids()
        prefix_input_ids, prefix_attention_mask, input_ids, attention_mask, prefix_index = (
            t.to(device)
            for t in (prefix_input_ids, prefix_attention_mask, input_ids, attention_mask, prefix_index)
        )
        prefix_token_item_ids, token_item_ids, user_ids, cf_history = (
            None if t is None else t.to(device)
            for t in (prefix_token_item_ids, token_item_ids, user_ids, cf_history)
        )

        def user_inputs(ids, rows):  # the user feature, where this part of the prompt holds the placeholder
            if (
                user_ids is None
                or self.config.user_token_id is None
                or not (ids == self.config.user_token_id).any()
            ):
                return None, None
            return user_ids[rows], None if cf_history is None else cf_history[rows]

        users, history = user_inputs(prefix_input_ids, torch.arange(n_prefixes, device=device))
        prefix_cache = self.model(
            prefix_input_ids,
            prefix_attention_mask,
            users,
            prefix_token_item_ids,
            cf_history=history,
            use_cache=True,
        ).past_key_values
        prefix_lengths = prefix_attention_mask.long().sum(-1)
        outputs = []
        for start in range(0, n, batch_size):
            rows = prefix_index[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            lengths = mask.long().sum(-1)
            width = int(lengths.max())
            mask, ids = mask[:, :width], input_ids[start : start + batch_size, :width]
            items = None if token_item_ids is None else token_item_ids[start : start + batch_size, :width]
            users, history = user_inputs(ids, rows)
            cache = DynamicCache(
                ddp_cache_data=[(keys[rows], values[rows]) for keys, values, *_ in prefix_cache],
                config=self.config.text_config,
            )
            hidden = self.model(
                ids, torch.cat([prefix_attention_mask[rows], mask], 1), users, items,
                position_ids=prefix_lengths[rows, None] + torch.arange(width, device=device),
                cf_history=history, past_key_values=cache, use_cache=True,
            ).last_hidden_state  # fmt: skip
            outputs.append(self.answer(hidden[torch.arange(len(rows), device=device), lengths - 1]))
        return CCFCTROutput(
            **{
                key: torch.cat([getattr(o, key) for o in outputs])
                for key in ("logits", "log_p_yes", "log_p_no", "scores")
            }
        )

    # ------------------------------------------------------------ construction
    @classmethod
    def from_llm(
        cls,
        llm: PreTrainedModel,
        tokenizer,
        num_users: int,
        num_items: int,
        user_embeddings=None,
        item_embeddings=None,
        *,
        cf_models=None,
        cf_embedding_dims: list[int] | None = None,
        yes_token: str = " Yes",
        no_token: str = " No",
        user_token: str = USER_TOKEN,
        item_token: str = ITEM_TOKEN,
        standardize_cf: bool = False,
        **config_kwargs,
    ) -> "CCFLlamaForCTR":
        """
        Build CCF-LLM around a pretrained causal LM and (optionally) pretrained CF embeddings.

        `add_cf_placeholders` adds `user_token` / `item_token` to `tokenizer` (in place) and rows for them to the
        LLM; the Yes/No answer ids are read from the tokenizer (each answer must be a single token). The LLM's weights
        and the CF tables are then copied into the new model.

        Args:
            llm: a causal LM, e.g. from `ccf_llm.load_llm()` or `AutoModelForCausalLM.from_pretrained`.
            tokenizer: its tokenizer.
            num_users, num_items: id ranges 1..num_users and 1..num_items (0 = padding).
            user_embeddings, item_embeddings: CF tables `(num_users + 1, l)` / `(num_items + 1, l)`, or lists of
                them (one per CF source, Eq. 7). Their widths give `cf_embedding_dims`.
            cf_models: instead of tables, pretrained CF backbones from `ccf_llm.modeling_collaborative` (one per
                source): MF/LightGCN give their tables, SASRec its item table and history encoder.
            yes_token, no_token: the answer strings as they follow `#Answer:` (BPE tokenizers: with a space).
            standardize_cf: center and scale the CF inputs of ALG from the given CF tables
                (`fit_cf_standardization`); with a sequential source, call that method with the training rows'
                `cf_history` instead.
            **config_kwargs: any other [`CCFLlamaConfig`] field, e.g. `fusion_mode="inject"`.
        """
        answer_ids = [single_token_id(tokenizer, answer) for answer in (yes_token, no_token)]
        user_token_id, item_token_id = add_cf_placeholders(llm, tokenizer, user_token, item_token)
        given = cf_models is not None or user_embeddings is not None or item_embeddings is not None
        if cf_models is not None:
            if user_embeddings is not None or item_embeddings is not None:
                raise ValueError("pass either cf_models or user_embeddings/item_embeddings, not both")
            cf_embedding_dims = [m.config.hidden_size for m in cf_models]
            sequential = [
                {k: v for k, v in m.config.to_dict().items() if k in _SASREC_FIELDS}
                if hasattr(m, "encode_history")
                else None
                for m in cf_models
            ]
            if any(sequential):
                config_kwargs["cf_sequential_encoders"] = sequential
        elif item_embeddings is not None:
            tables = [item_embeddings] if isinstance(item_embeddings, torch.Tensor) else list(item_embeddings)
            cf_embedding_dims = [int(t.shape[1]) for t in tables]
        config = CCFLlamaConfig(
            text_config=llm.config.to_dict(), num_users=num_users, num_items=num_items,
            cf_embedding_dims=cf_embedding_dims, user_token_id=user_token_id, item_token_id=item_token_id,
            yes_token_id=answer_ids[0], no_token_id=answer_ids[1], **config_kwargs,
        )  # fmt: skip
        if given and not config.uses_cf:
            raise ValueError(f"fusion_mode={config.fusion_mode!r} uses no CF embeddings, but some were given")
        model = cls(config).to(llm.dtype)
        for name in FP32_MODULES:  # as from_pretrained keeps them (_keep_in_fp32_modules_strict)
            if hasattr(model.model, name):
                getattr(model.model, name).float()
        model.model.language_model.load_state_dict(llm.get_decoder().state_dict())
        model.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
        # `to_dict` leaves out the attention implementation the LLM was loaded with (e.g. `attn_implementation="eager"`)
        model.language_model.set_attn_implementation(llm.config._attn_implementation)
        if cf_models is not None:
            model.load_cf_models(cf_models)
        elif given:
            if user_embeddings is None or item_embeddings is None:
                raise ValueError("pass both user_embeddings and item_embeddings, or neither")
            model.set_cf_embeddings(user_embeddings, item_embeddings)
        if standardize_cf:
            if not given:
                raise ValueError("standardize_cf=True needs CF tables (cf_models or user/item_embeddings)")
            model.fit_cf_standardization()
        model.name_or_path = getattr(llm, "name_or_path", "")
        return model


_SASREC_FIELDS = (
    "num_users",
    "num_items",
    "hidden_size",
    "max_history",
    "num_blocks",
    "num_heads",
    "dropout",
)


def single_token_id(tokenizer, text: str) -> int:
    """The vocabulary id of `text`, which must encode to exactly one known token (the Yes/No answers)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no single token for the answer {text!r} (it encodes to {ids}); "
            "pass yes_token=/no_token= strings that are single tokens of this vocabulary"
        )
    return ids[0]


def add_cf_placeholders(
    llm: PreTrainedModel, tokenizer, user_token: str = USER_TOKEN, item_token: str = ITEM_TOKEN
):
    """
    Tokenizer surgery for the hybrid prompt: add `user_token` and `item_token` to `tokenizer` (in place) as special
    tokens and give `llm` embedding (and output) rows for them, each the mean of the existing rows, exactly, so the
    same LLM always gives the same base model. Returns their ids `(user_token_id, item_token_id)`.
    """
    tokenizer.add_special_tokens({"additional_special_tokens": [user_token, item_token]})
    token_ids = tokenizer.convert_tokens_to_ids([user_token, item_token])
    old_vocab = llm.get_input_embeddings().num_embeddings
    if len(tokenizer) > old_vocab:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        tables = {
            id(t): t for t in (llm.get_input_embeddings(), llm.get_output_embeddings()) if t is not None
        }
        with torch.no_grad():
            for table in tables.values():
                table.weight[old_vocab:] = table.weight[:old_vocab].mean(0)
    return tuple(token_ids)


register_checkpoint_conversion_mapping(
    CCFLlamaForCTR.__name__,
    [WeightRenaming(rf"^{re.escape(old)}", new) for old, new in _LEGACY_PREFIXES],
    overwrite=True,
)

__all__ = [
    "CCFCTROutput",
    "CCFLlamaForCTR",
    "CCFLlamaModel",
    "CCFLlamaPreTrainedModel",
    "add_cf_placeholders",
    "ccf_ctr_loss",
    "single_token_id",
    "sum_cf_sources",
]
