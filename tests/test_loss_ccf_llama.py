"""ccf_llm.loss_ccf_llama: Eq. 5 against hand computation, its stability and its input checks."""

import pytest
import torch
import torch.nn.functional as F

from ccf_llm import ccf_ctr_loss


def test_eq5_loss_matches_hand_computation_and_is_stable():
    p_yes = torch.tensor([0.7, 0.2, 0.05, 0.5])
    p_no = torch.tensor([0.1, 0.6, 0.9, 0.3])
    y = torch.tensor([1, 0, 1, 0])
    expected = (
        F.binary_cross_entropy(p_yes, y.float(), reduction="none")
        + F.binary_cross_entropy(p_no, 1 - y.float(), reduction="none")
        + 2.0 * -torch.log(torch.sigmoid((2 * y - 1) * (p_yes.log() - p_no.log())))
    ).mean()
    loss = ccf_ctr_loss(p_yes.log(), p_no.log(), y, bpr_weight=2.0)
    torch.testing.assert_close(loss, expected)
    # saturated probabilities stay finite (BCELoss's clamp at -100) and keep gradients finite
    logs = torch.tensor([0.0, -1e4], requires_grad=True)
    extreme = ccf_ctr_loss(logs, logs.flip(0), torch.tensor([0, 1]))
    extreme.backward()
    assert torch.isfinite(extreme) and extreme > 100 and torch.isfinite(logs.grad).all()


def test_the_bpr_weight_scales_the_bpr_term_only():
    log_p_yes, log_p_no, y = torch.tensor([-0.5, -2.0]), torch.tensor([-1.5, -0.3]), torch.tensor([1, 0])
    bpr = F.softplus(-(2 * y - 1) * (log_p_yes - log_p_no)).mean()
    without = ccf_ctr_loss(log_p_yes, log_p_no, y, bpr_weight=0.0)
    torch.testing.assert_close(ccf_ctr_loss(log_p_yes, log_p_no, y, bpr_weight=3.0), without + 3.0 * bpr)
    assert bpr > 0.1  # the term the weight scales is not negligible here


def test_bad_labels_and_weights_are_refused():
    logs = torch.tensor([-0.5, -0.7])
    for labels in ([1, 2], [0, -1], [0.5, 1.0]):
        with pytest.raises(ValueError, match="labels must be 0 or 1"):
            ccf_ctr_loss(logs, logs, torch.tensor(labels))
    with pytest.raises(ValueError, match=r"bpr_weight \(k in Eq. 5\) must be >= 0"):
        ccf_ctr_loss(logs, logs, torch.tensor([0, 1]), bpr_weight=-1.0)
