# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""CCF-LLM model configuration (Liu et al., CIKM'24, "Collaborative Cross-modal Fusion with LLM for Recommendation")."""

from dataclasses import dataclass
from typing import Literal

from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

USER_TOKEN = "<|user_cf|>"
"""The default user placeholder string `[User_u]`; its vocabulary id is `CCFLlamaConfig.user_token_id`."""
ITEM_TOKEN = "<|item_cf|>"
"""The default item placeholder string (`inject` mode); its vocabulary id is `CCFLlamaConfig.item_token_id`."""


@dataclass(frozen=True)
class FusionMode:
    """
    What one fusion mode means: the single description the model, the processor, the pipeline and the examples read.

    Args:
        name: the `fusion_mode` string.
        uses_cf: the prompt carries the collaborative signal: a `{user}` placeholder, the CF encoder and ALG exist.
        marks_titles: every title token carries its item id and is fused, `x_SM[t] + Σ_s α_s ⊙ ALG_s(x_i^CF)` (Eq. 4).
        item_placeholder: an item placeholder token follows each title and becomes `Σ_s ALG_s(x_i^CF)` (CoLLM).
        gate_width: the width of α (Eq. 3): `"hidden"` (α ∈ R^d), `"scalar"` (α ∈ R), or `None` (α = 1: the GATE
            module exists without parameters; only modes that mark titles have a GATE).
        description: where the mode comes from.
    """

    name: str
    uses_cf: bool
    marks_titles: bool
    item_placeholder: bool
    gate_width: Literal["hidden", "scalar"] | None
    description: str

    @property
    def has_gate(self) -> bool:
        """Whether the model has a GATE module (`gate`): every mode that fuses title tokens."""
        return self.marks_titles

    def alpha_size(self, hidden_size: int) -> int | None:
        """The GATE MLPs' output width (d or 1), or None when the mode has no GATE MLPs."""
        return {"hidden": hidden_size, "scalar": 1, None: None}[self.gate_width]


FUSION_MODE_TABLE: dict[str, FusionMode] = {
    mode.name: mode
    for mode in (
        FusionMode("gate", True, True, False, "hidden", "CCF-LLM (§3.3): dimension-wise α = MLP(ALG(x^CF)) + MLP(x_SM[t]) (Eq. 3-4)"),
        FusionMode("token_gate", True, True, False, "scalar", 'ablation "α ∈ R" (Fig. 3a): one scalar α per token'),
        FusionMode("add", True, True, False, None, 'ablation "α = 1" (Fig. 3a): x_SM[t] + ALG(x^CF)'),
        FusionMode("inject", True, False, True, None, "CoLLM: ALG(x_i^CF) as an extra token after each title"),
        FusionMode("text", False, False, False, None, "TALLRec: no collaborative signal"),
    )
}  # fmt: skip
"""The fusion modes, what each means and which parameters it has (see `FusionMode`). Adding a mode is a row here."""

FUSION_MODES = tuple(FUSION_MODE_TABLE)
"""The names of the fusion modes (`FUSION_MODE_TABLE`), the paper's CCF-LLM first."""


def get_fusion_mode(name: str) -> FusionMode:
    """The `FusionMode` of `name`, or a ValueError listing the known modes."""
    if name not in FUSION_MODE_TABLE:
        raise ValueError(f"fusion_mode must be one of {FUSION_MODES}, got {name!r}")
    return FUSION_MODE_TABLE[name]


class CCFLlamaConfig(PreTrainedConfig):
    r"""
    Configuration of [`CCFLlamaForCTR`]: a decoder LLM (`text_config`) plus the collaborative-filtering side of
    CCF-LLM — one or more CF sources (Eq. 7), the alignment network ALG (Eq. 2) and the GATE (Eq. 3).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the decoder LLM, any causal LM that `AutoModelForCausalLM` can build. Llama by default.
        num_users (`int`, *optional*, defaults to 1):
            Number of users. Valid user ids are `1..num_users`; id 0 is the padding row of the CF tables.
        num_items (`int`, *optional*, defaults to 1):
            Number of items. Valid item ids are `1..num_items`; 0 means "no item" in `item_ids`.
        cf_embedding_dims (`list[int]`, *optional*, defaults to `[128]`):
            Size `l` of the CF embeddings `x^CF`, one entry per CF source. Two or more entries give the multi-source
            fusion of Eq. 7 (one ALG and one GATE per source).
        cf_source_names (`list[str]`, *optional*):
            Names of the CF sources (e.g. `["lightgcn", "mf"]`), for model cards and logs.
        cf_sequential_encoders (`list[dict | None]`, *optional*):
            Per CF source, `None` for a user table (MF, LightGCN) or the `SASRecConfig` dict of a sequential user
            encoder (SASRec): its user vector is computed per row from `cf_history`.
        cf_input_scales (`list[list[float]]`, *optional*):
            Per CF source, `[user_scale, item_scale]`: ENC's outputs are divided by them before ALG (a fixed
            reparameterization of ALG's first layer, like an image processor's `image_std`).
            `CCFLlamaForCTR.fit_cf_standardization` (or `from_llm(..., standardize_cf=True)`) sets them to the RMS
            of the centered CF vectors, so ALG sees unit-scale inputs whatever the CF backbone's weight decay left
            (SASRec's item table on ML-1M has RMS 0.007, MF's 0.05). `None`: no scaling.
        cf_input_shifts (`list[list[list[float] | None]]`, *optional*):
            Per CF source, `[user_shift, item_shift]`: vectors of the source's width subtracted from ENC's outputs
            before the division by `cf_input_scales` (like `image_mean`); `None` for a side leaves it uncentered.
            `fit_cf_standardization` sets them to the mean CF vector: SASRec's user vectors on ML-1M share one
            offset that hides their differences from ALG. A centered sequential source gives a row without history
            the mean user vector (0 after centering); its statistics are taken over rows with a history.
        fusion_mode (`str`, *optional*, defaults to `"gate"`):
            One of `"gate"`, `"token_gate"`, `"add"`, `"inject"`, `"text"`; what each means is its row of
            `FUSION_MODE_TABLE` (`config.fusion`).
        alignment_hidden_size (`int`, *optional*):
            Hidden size of the two-layer ALG MLP. Defaults to the LLM's hidden size.
        gate_hidden_size (`int`, *optional*):
            Hidden size of each of the two GATE MLPs. Defaults to the LLM's hidden size.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the ALG and GATE MLPs.
        zero_init_gate (`bool`, *optional*, defaults to `True`):
            Zero-initialize the output layers of the GATE MLPs, so α = 0 and an untrained model reads pure text
            titles (the state stage 1 of the two-stage schedule trains LoRA in).
        gate_init_alpha (`float`, *optional*, defaults to 0.0):
            With `zero_init_gate`, the value α starts at for every token and dimension (the GATE's output weights
            start at zero, its CF branch's output bias at this value). 0 hides item CF from stage 1 (pure text
            titles); 1 starts from the `add` ablation's fusion, so stage 1 already trains LoRA on fused titles (the
            paper's stage 1 runs on the hybrid prompt with the fusion untrained, not switched off) and stage 2
            learns the dimension-wise gate from there.
        user_token_id (`int`, *optional*):
            Token id of the user placeholder `[User_u]`.
        item_token_id (`int`, *optional*):
            Token id of the item placeholder, used by `inject` mode (CoLLM's extra CF token after each title).
        yes_token_id (`int`, *optional*):
            Vocabulary id of the "Yes" answer token.
        no_token_id (`int`, *optional*):
            Vocabulary id of the "No" answer token.

    The CF encoder (Θ_E) is built frozen; tuning it and the BPR weight `k` of Eq. 5 are training choices, named once,
    in `CCFTrainingArguments` (`train_cf_encoder`, `bpr_weight`). Configs saved with the former `train_cf_embeddings`
    and `bpr_weight` fields still load (the fields are dropped with a warning).

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from ccf_llm import CCFLlamaConfig, CCFLlamaForCTR

    >>> text_config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                           num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    >>> config = CCFLlamaConfig(text_config=text_config, num_users=10, num_items=20, cf_embedding_dims=[16],
    ...                         user_token_id=98, item_token_id=99, yes_token_id=5, no_token_id=6)
    >>> model = CCFLlamaForCTR(config)
    ```
    """

    model_type = "ccf_llama"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    num_users: int = 1
    num_items: int = 1
    cf_embedding_dims: list[int] | None = None
    cf_source_names: list[str] | None = None
    cf_sequential_encoders: list[dict | None] | None = None
    cf_input_scales: list[list[float]] | None = None
    cf_input_shifts: list[list[list[float] | None]] | None = None
    fusion_mode: str = "gate"
    alignment_hidden_size: int | None = None
    gate_hidden_size: int | None = None
    projector_hidden_act: str = "gelu"
    zero_init_gate: bool = True
    gate_init_alpha: float = 0.0
    user_token_id: int | None = None
    item_token_id: int | None = None
    yes_token_id: int | None = None
    no_token_id: int | None = None

    def __post_init__(self, **kwargs):
        for legacy, home in (("bpr_weight", "CCFTrainingArguments.bpr_weight"),
                             ("train_cf_embeddings", "CCFTrainingArguments.train_cf_encoder")):  # fmt: skip
            if legacy in kwargs:
                logger.warning_once(f"CCFLlamaConfig.{legacy} is no longer a model setting: set {home}")
                kwargs.pop(legacy)
        super().__post_init__(**kwargs)
        if self.cf_embedding_dims is None:
            self.cf_embedding_dims = [128]
        elif isinstance(self.cf_embedding_dims, int):
            self.cf_embedding_dims = [self.cf_embedding_dims]
        self.cf_embedding_dims = [int(d) for d in self.cf_embedding_dims]
        self._check()

    def _check(self):
        get_fusion_mode(self.fusion_mode)
        if self.num_users < 1 or self.num_items < 1:
            raise ValueError(
                f"num_users and num_items must be >= 1, got {self.num_users} and {self.num_items}"
            )
        if not self.cf_embedding_dims or any(d < 1 for d in self.cf_embedding_dims):
            raise ValueError(
                f"cf_embedding_dims must be a non-empty list of positive sizes, got {self.cf_embedding_dims}"
            )
        if self.cf_source_names is not None and len(self.cf_source_names) != len(self.cf_embedding_dims):
            raise ValueError(
                f"cf_source_names has {len(self.cf_source_names)} names for {len(self.cf_embedding_dims)} CF sources"
            )
        scales = self.cf_input_scales
        if scales is not None and (
            len(scales) != len(self.cf_embedding_dims) or any(len(s) != 2 or min(s) <= 0 for s in scales)
        ):
            raise ValueError(
                f"cf_input_scales must hold one positive [user_scale, item_scale] pair per CF source "
                f"({len(self.cf_embedding_dims)}), got {scales}"
            )
        shifts = self.cf_input_shifts
        if shifts is not None and (
            len(shifts) != len(self.cf_embedding_dims)
            or any(
                len(pair) != 2 or any(v is not None and len(v) != dim for v in pair)
                for pair, dim in zip(shifts, self.cf_embedding_dims, strict=True)
            )
        ):
            raise ValueError(
                f"cf_input_shifts must hold one [user_shift, item_shift] pair per CF source, each a vector of the "
                f"source's width ({self.cf_embedding_dims}) or None"
            )
        sequential = self.cf_sequential_encoders
        if sequential is not None:
            if len(sequential) != len(self.cf_embedding_dims):
                raise ValueError(
                    f"cf_sequential_encoders has {len(sequential)} entries for {len(self.cf_embedding_dims)} CF sources"
                )
            for s, (encoder, dim) in enumerate(zip(sequential, self.cf_embedding_dims, strict=True)):
                if encoder is not None and encoder.get("hidden_size") != dim:
                    raise ValueError(
                        f"CF source {s}: the sequential encoder's hidden_size {encoder.get('hidden_size')} differs "
                        f"from cf_embedding_dims[{s}] = {dim}"
                    )

    @property
    def num_cf_sources(self) -> int:
        return len(self.cf_embedding_dims)

    @property
    def max_cf_history(self) -> int:
        """Columns of `cf_history` the sequential CF sources read (0 when every source is a user table)."""
        return max((e["max_history"] for e in self.cf_sequential_encoders or [] if e), default=0)

    @property
    def tie_word_embeddings(self) -> bool:
        """The LLM's setting: `CCFLlamaForCTR.lm_head` shares the token-embedding table when the LLM's head does."""
        return bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def fusion(self) -> FusionMode:
        """What `fusion_mode` means (its row of `FUSION_MODE_TABLE`)."""
        return get_fusion_mode(self.fusion_mode)

    @property
    def uses_cf(self) -> bool:
        """Whether the prompt carries the collaborative signal (`config.fusion.uses_cf`)."""
        return self.fusion.uses_cf


__all__ = [
    "CCFLlamaConfig",
    "FUSION_MODES",
    "FUSION_MODE_TABLE",
    "FusionMode",
    "ITEM_TOKEN",
    "USER_TOKEN",
    "get_fusion_mode",
]
