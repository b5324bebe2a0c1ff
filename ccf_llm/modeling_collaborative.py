# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""The collaborative-filtering backbones that provide x^CF (ENC, Eq. 1 of the CCF-LLM paper): MF, LightGCN, SASRec.

Each is a small `PreTrainedModel` scoring a (user, item) pair with a dot product (INT = inner product,
Θ_T = ∅) and trained with BCE-with-logits on all train rows, as CoLLM trained the baselines the paper reports.
`export_cf_embeddings()` gives the tables `CCFLlamaForCTR.from_llm(...)` loads.

Cold users and items (absent from the train split) get the zero vector: `zero_cold_rows(train_users,
train_items)` zeroes them before training; with no data gradient and Adam's zero update on a zero row, they stay
exactly zero, so MF/LightGCN score them at logit 0 and ALG sees one "unknown" vector for all of them.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_collaborative import CFConfig, LightGCNConfig, MFConfig, SASRecConfig


@dataclass
class CFOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): BCE-with-logits against `labels`.
        logits (`torch.FloatTensor` of shape `(batch_size,)`): the click logit `<x_u, x_i>`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class CFPreTrainedModel(PreTrainedModel):
    """Base of the CF backbones. Initialization follows CoLLM's code: normal embeddings with `config.init_std`
    (padding row 0), PyTorch's default initialization for linear and attention layers."""

    config: CFConfig
    config_class = CFConfig
    base_model_prefix = "cf"
    accepts_loss_kwargs = False
    main_input_name = "user_ids"

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.padding_idx is not None:
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, (nn.Linear, nn.MultiheadAttention)):
            module._reset_parameters() if isinstance(
                module, nn.MultiheadAttention
            ) else module.reset_parameters()
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def pair_vectors(self, user_ids, item_ids, history=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x_u^CF, x_i^CF)` for a batch of pairs."""
        raise NotImplementedError

    def forward(
        self,
        user_ids: torch.LongTensor,
        item_ids: torch.LongTensor,
        history: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CFOutput:
        r"""
        Args:
            user_ids (`(batch_size,)`): user ids (1..num_users).
            item_ids (`(batch_size,)`): target item ids (1..num_items).
            history (`(batch_size, max_history)`, *optional*): the latest positives, left-padded with 0 (SASRec).
            labels (`(batch_size,)`, *optional*): 0/1 click labels.
        """
        for name, ids, upper in (
            ("user", user_ids, self.config.num_users),
            ("item", item_ids, self.config.num_items),
        ):
            if ((ids < 1) | (ids > upper)).any():
                raise ValueError(
                    f"{name} ids out of range 1..{upper}: {ids[(ids < 1) | (ids > upper)][:5].tolist()}"
                )
        users, items = self.pair_vectors(user_ids, item_ids, history)
        logits = (users * items).sum(-1)
        loss = (
            F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            if labels is not None
            else None
        )
        return CFOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def recommend(self, user_ids, candidate_item_ids, k: int = 10, history=None) -> torch.Tensor:
        """
        The `k` candidates with the highest scores for each user, best first: `(len(user_ids), k)` item ids. For
        the pilot study of §4.2 (RQ1): "users like these items may also enjoy: {top-10 items}".
        """
        user_ids = torch.as_tensor(user_ids).long()
        candidates = torch.as_tensor(candidate_item_ids).long()
        if k > len(candidates):
            raise ValueError(f"k={k} is more than the {len(candidates)} candidate items")
        users, items = self.pair_vectors(user_ids, candidates, history)
        return candidates[(users @ items.T).topk(k, dim=-1).indices]

    @torch.no_grad()
    def zero_cold_rows(self, train_users, train_items) -> tuple[int, int]:
        """Zero the embeddings of users/items that never occur in train; returns how many of each were zeroed."""
        counts = []
        for name, seen in (("user_embeddings", train_users), ("item_embeddings", train_items)):
            table = getattr(self, name, None)
            if table is None:  # SASRec has no user table
                counts.append(0)
                continue
            cold = torch.ones(table.num_embeddings, dtype=torch.bool)
            cold[0] = False
            cold[torch.as_tensor(seen).long().unique()] = False
            table.weight[cold] = 0.0
            counts.append(int(cold.sum()))
        return counts[0], counts[1]

    @torch.no_grad()
    def export_cf_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(user table (num_users + 1, l), item table (num_items + 1, l))` in the form `from_llm` loads."""
        users, items = self.user_embeddings.weight, self.item_embeddings.weight
        return users.detach().clone(), items.detach().clone()


class MFModel(CFPreTrainedModel):
    """Matrix factorization: `logit = <x_u, x_i>`, no bias (CoLLM's MF)."""

    config: MFConfig
    config_class = MFConfig

    def __init__(self, config: MFConfig):
        super().__init__(config)
        self.user_embeddings = nn.Embedding(config.num_users + 1, config.hidden_size, padding_idx=0)
        self.item_embeddings = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=0)
        self.post_init()

    def pair_vectors(self, user_ids, item_ids, history=None):
        return self.user_embeddings(user_ids), self.item_embeddings(item_ids)


class LightGCNModel(CFPreTrainedModel):
    """
    LightGCN: embeddings propagated over the user–item graph of train positives with `D^-1/2 A D^-1/2` (no self
    loops), averaged over layers 0..K. The edges are a buffer (`set_graph`) saved with the weights.
    """

    config: LightGCNConfig
    config_class = LightGCNConfig

    def __init__(self, config: LightGCNConfig):
        super().__init__(config)
        self.user_embeddings = nn.Embedding(config.num_users + 1, config.hidden_size, padding_idx=0)
        self.item_embeddings = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=0)
        num_edges = getattr(config, "num_edges", 0) or 0
        self.register_buffer("edges", torch.zeros(2, num_edges, dtype=torch.long))
        self.post_init()

    def set_graph(self, user_ids, item_ids):
        """Build the graph from the (user, item) pairs of train positives (duplicates count once)."""
        pairs = torch.stack([torch.as_tensor(user_ids).long(), torch.as_tensor(item_ids).long()]).unique(
            dim=1
        )
        self.edges = pairs
        self.config.num_edges = int(pairs.shape[1])

    def _adjacency(self) -> torch.Tensor:
        n_users = self.config.num_users + 1
        n = n_users + self.config.num_items + 1
        rows = torch.cat([self.edges[0], self.edges[1] + n_users])
        cols = torch.cat([self.edges[1] + n_users, self.edges[0]])
        degree = torch.bincount(rows, minlength=n).float()
        values = degree[rows].rsqrt() * degree[cols].rsqrt()
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n)).coalesce()

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item tables: the mean of layers 0..K."""
        layer = torch.cat([self.user_embeddings.weight, self.item_embeddings.weight])
        total = layer
        if self.edges.shape[1]:
            adjacency = self._adjacency().to(layer.dtype)
            for _ in range(self.config.num_layers):
                layer = torch.sparse.mm(adjacency, layer)
                total = total + layer
        else:
            total = layer * (self.config.num_layers + 1)
        mean = total / (self.config.num_layers + 1)
        return mean[: self.config.num_users + 1], mean[self.config.num_users + 1 :]

    def pair_vectors(self, user_ids, item_ids, history=None):
        users, items = self.propagate()  # the whole graph, once per batch
        return users[user_ids], items[item_ids]

    @torch.no_grad()
    def export_cf_embeddings(self):
        users, items = self.propagate()
        return users.detach().clone(), items.detach().clone()


class SASRecBlock(nn.Module):
    """Pre-LN causal self-attention block with a point-wise feed-forward, as in the reference SASRec code."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        d = config.hidden_size
        self.attention_norm = nn.LayerNorm(d, eps=1e-8)
        self.attention = nn.MultiheadAttention(d, config.num_heads, dropout=config.dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(d, d),
            nn.Dropout(config.dropout),
            nn.ReLU(),
            nn.Linear(d, d),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        query = self.attention_norm(x)
        x = query + self.attention(query, x, x, attn_mask=causal, need_weights=False)[0]
        x = self.ffn_norm(x)
        return (x + self.ffn(x)) * keep


class SASRecEncoder(nn.Module):
    """
    The user side of SASRec: positions, causal self-attention blocks and a final norm over the embeddings of the
    row's latest items; the user vector is the last position. The item table is passed in, so the same encoder
    serves `SASRecModel` and the CF encoder of `CCFLlamaForCTR` (where it is tuned with Θ_E in stage 2).
    """

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.max_history = config.max_history
        self.position_embeddings = nn.Embedding(config.max_history, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=1e-8)

    def forward(self, history: torch.LongTensor, item_embeddings: nn.Embedding) -> torch.Tensor:
        """
        `(batch, max_history)` left-padded item ids → `(batch, hidden_size)` user vectors. Exactly `max_history`
        columns: the padding positions still affect the output and the latest item's position is `max_history - 1`,
        so the same items padded to another width would give other vectors.
        """
        if history is None:
            raise ValueError("SASRec computes the user vector from the history: pass history= (cf_history=)")
        length = history.shape[1]
        if length != self.max_history:
            raise ValueError(
                f"history has {length} columns; SASRec reads exactly max_history={self.max_history}, left-padded "
                "with 0 (another width moves every item to another position)"
            )
        x = item_embeddings(history) * math.sqrt(self.hidden_size)
        x = self.dropout(x + self.position_embeddings.weight)
        keep = (history != 0).unsqueeze(-1).to(x.dtype)
        x = x * keep
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        for block in self.blocks:
            x = block(x, causal, keep)
        return self.final_norm(x)[:, -1]


class SASRecModel(CFPreTrainedModel):
    """SASRec: the user vector is the last position of a causal Transformer over the row's latest items."""

    config: SASRecConfig
    config_class = SASRecConfig

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.item_embeddings = nn.Embedding(config.num_items + 1, config.hidden_size, padding_idx=0)
        self.encoder = SASRecEncoder(config)
        self.post_init()

    def encode_history(self, history: torch.LongTensor) -> torch.Tensor:
        """`(batch, max_history)` left-padded item ids → `(batch, hidden_size)` user vectors."""
        return self.encoder(history, self.item_embeddings)

    def pair_vectors(self, user_ids, item_ids, history=None):
        return self.encode_history(history), self.item_embeddings(item_ids)

    @torch.no_grad()
    def export_cf_embeddings(self):
        """SASRec has no user table: pass the model itself to `CCFLlamaForCTR.from_llm(cf_models=[...])`."""
        raise ValueError(
            "SASRec's user vector depends on each row's history: pass the SASRecModel to "
            "CCFLlamaForCTR.from_llm(..., cf_models=[model]), which copies its item table and history encoder"
        )


CF_BACKBONES = {
    "mf": (MFConfig, MFModel),
    "lightgcn": (LightGCNConfig, LightGCNModel),
    "sasrec": (SASRecConfig, SASRecModel),
}


def cf_backbone(name: str):
    """`(config class, model class)` of a CF backbone by name: `mf`, `lightgcn` or `sasrec`."""
    try:
        return CF_BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown CF backbone {name!r}; choose one of {sorted(CF_BACKBONES)}") from None


__all__ = [
    "CF_BACKBONES",
    "CFOutput",
    "CFPreTrainedModel",
    "LightGCNModel",
    "MFModel",
    "SASRecEncoder",
    "SASRecModel",
    "cf_backbone",
]
