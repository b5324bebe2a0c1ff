# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Configurations of the collaborative-filtering backbones (ENC of §3.1): MF, LightGCN and SASRec."""

from transformers.configuration_utils import PreTrainedConfig


class CFConfig(PreTrainedConfig):
    r"""
    Common fields of the CF backbones.

    Args:
        num_users (`int`): users have ids `1..num_users`; 0 is the padding row.
        num_items (`int`): items have ids `1..num_items`; 0 is the padding row.
        hidden_size (`int`): the embedding size `l` of `x^CF`.
        init_std (`float`): standard deviation of the normal initialization of the embeddings.
    """

    model_type = "ccf_cf"
    num_users: int = 1
    num_items: int = 1
    hidden_size: int = 64
    init_std: float = 0.1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_users < 1 or self.num_items < 1 or self.hidden_size < 1:
            raise ValueError(
                f"num_users, num_items and hidden_size must be >= 1, got {self.num_users}, {self.num_items}, "
                f"{self.hidden_size}"
            )


class MFConfig(CFConfig):
    """Matrix factorization (Koren et al., 2009): score = <x_u, x_i>, no bias; CoLLM's N(0, 1) init."""

    model_type = "ccf_mf"
    hidden_size: int = 256
    init_std: float = 1.0


class LightGCNConfig(CFConfig):
    """
    LightGCN (He et al., 2020) on the graph of train positives, symmetric normalization D^-1/2 A D^-1/2 without
    self loops; the output is the mean of layers 0..`num_layers`.
    """

    model_type = "ccf_lightgcn"
    num_layers: int = 2


class SASRecConfig(CFConfig):
    """
    SASRec (Kang & McAuley, 2018): the user vector is the last position of a causal self-attention encoder over the
    row's latest `max_history` items (left-padded with 0); score = <user vector, x_i>.
    """

    model_type = "ccf_sasrec"
    init_std: float = 1.0  # CoLLM's SASRec keeps PyTorch's default N(0, 1) embeddings
    max_history: int = 25
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2


__all__ = ["CFConfig", "LightGCNConfig", "MFConfig", "SASRecConfig"]
