# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""The training objective of CCF-LLM, Eq. 5: `CCFTrainer.compute_loss` optimizes it, `CCFLlamaForCTR.forward(labels=...)`
returns it for plain-PyTorch loops; both call `ccf_ctr_loss`. Only torch is imported (the modeling file, which
`trust_remote_code` checkpoints carry, imports this one)."""

import torch
import torch.nn.functional as F

DEFAULT_BPR_WEIGHT = 2.0
"""The paper's `k` of Eq. 5 (§4.1), the default of `CCFTrainingArguments.bpr_weight`."""


def _log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """
    log(1 - exp(log_p)) for log_p <= 0, stable at both ends (Mächler, 2012). `log_p` is capped at -1e-12 (p < 1)
    as BCELoss caps its denominator, and each branch of the `where` sees only inputs it is finite on, so
    gradients stay finite even at p = 1.
    """
    log_p = log_p.clamp(max=-1e-12)
    near_zero = log_p > -0.6931471805599453
    small = torch.log(-torch.expm1(torch.where(near_zero, log_p, -1.0)))
    large = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, log_p)))
    return torch.where(near_zero, small, large)


def ccf_ctr_loss(
    log_p_yes: torch.Tensor,
    log_p_no: torch.Tensor,
    labels: torch.Tensor,
    bpr_weight: float = DEFAULT_BPR_WEIGHT,
) -> torch.Tensor:
    """
    Eq. 5 of the paper: `L1(p_yes, y) + L1(p_no, 1 - y) + k · L2(p_yes, p_no, y)`, averaged over the batch, from the
    log-probabilities the model returns (`CCFCTROutput.log_p_yes` / `log_p_no`), `k = bpr_weight`.

    L1 is binary cross-entropy on the full-vocabulary probabilities, computed from log-probabilities
    (`log(1 - p)` via `log1mexp`; each log term clamped at -100 as `torch.nn.BCELoss` does). L2 is the BPR loss
    -log σ(s · (log p_yes - log p_no)) with s = +1 for positives and -1 for negatives: it pushes p_yes above p_no
    for clicks and below it otherwise. The BPR margin is taken on log-probabilities (equivalently on the Yes/No
    logits, since both share the softmax normalizer), which keeps its gradient alive when both probabilities are
    small.
    """
    if bpr_weight < 0:
        raise ValueError(f"bpr_weight (k in Eq. 5) must be >= 0, got {bpr_weight}")
    invalid = (labels != 0) & (labels != 1)
    if invalid.any():
        raise ValueError(f"labels must be 0 or 1 (click or not), got {labels[invalid][:10].tolist()}")
    y = labels.to(log_p_yes.dtype)
    bce_yes = -(y * log_p_yes.clamp(min=-100) + (1 - y) * _log1mexp(log_p_yes).clamp(min=-100))
    bce_no = -((1 - y) * log_p_no.clamp(min=-100) + y * _log1mexp(log_p_no).clamp(min=-100))
    bpr = F.softplus(-(2 * y - 1) * (log_p_yes - log_p_no))
    return (bce_yes + bce_no + bpr_weight * bpr).mean()


__all__ = ["DEFAULT_BPR_WEIGHT", "ccf_ctr_loss"]
