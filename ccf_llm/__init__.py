# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""ccf-llm: CCF-LLM (CIKM'24) for CTR prediction, as a Hugging Face model package.

Importing the package registers `ccf_llama` with `AutoConfig` / `AutoModel`, so `AutoModel.from_pretrained(dir)`
returns a `CCFLlamaForCTR`; saved checkpoints also carry the code (`auto_map`) for `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_ccf_llama import FUSION_MODE_TABLE, FUSION_MODES, CCFLlamaConfig, FusionMode
from .configuration_collaborative import LightGCNConfig, MFConfig, SASRecConfig
from .distributed_scoring import score_rows_distributed, shard_rows_by_user
from .loss_ccf_llama import ccf_ctr_loss
from .modeling_ccf_llama import CCFCTROutput, CCFLlamaForCTR, CCFLlamaModel, CCFLlamaPreTrainedModel
from .modeling_collaborative import LightGCNModel, MFModel, SASRecModel, cf_backbone
from .pipeline_ctr_scoring import CTRScoringPipeline, load_ctr_model, score_rows, scoring_tokens
from .pretrained_llm import DEFAULT_LLM, load_llm, resolve_llm
from .processing_ccf_llama import PAPER_TEMPLATE, CCFDataCollator, CCFLlamaProcessor

AutoConfig.register(CCFLlamaConfig.model_type, CCFLlamaConfig, exist_ok=True)
AutoModel.register(CCFLlamaConfig, CCFLlamaForCTR, exist_ok=True)
for _config, _model in ((MFConfig, MFModel), (LightGCNConfig, LightGCNModel), (SASRecConfig, SASRecModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
AutoProcessor.register(CCFLlamaConfig, CCFLlamaProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    "ctr-scoring", pipeline_class=CTRScoringPipeline, pt_model=AutoModel, type="multimodal"
)
CCFLlamaConfig.register_for_auto_class()
CCFLlamaForCTR.register_for_auto_class("AutoModel")

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LLM",
    "FUSION_MODES",
    "FUSION_MODE_TABLE",
    "FusionMode",
    "PAPER_TEMPLATE",
    "CCFCTROutput",
    "CTRScoringPipeline",
    "CCFDataCollator",
    "CCFLlamaProcessor",
    "CCFLlamaConfig",
    "CCFLlamaForCTR",
    "CCFLlamaModel",
    "CCFLlamaPreTrainedModel",
    "LightGCNConfig",
    "LightGCNModel",
    "MFConfig",
    "MFModel",
    "SASRecConfig",
    "SASRecModel",
    "cf_backbone",
    "ccf_ctr_loss",
    "load_ctr_model",
    "load_llm",
    "resolve_llm",
    "score_rows",
    "score_rows_distributed",
    "scoring_tokens",
    "shard_rows_by_user",
]
