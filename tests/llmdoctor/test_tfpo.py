"""TFPO losses: the O(L) SubTB equals the O(L^2) oracle (values and gradients, with padding); balance gives
zero loss; the hinge; first divergence."""
from __future__ import annotations

import pytest
import torch

from fastdoctor.llmdoctor import tfpo


def batch(lengths=(7, 1, 12, 4), seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    mask = torch.arange(longest).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    rewards = torch.randn(len(lengths), longest, generator=g, dtype=torch.float64) * mask
    token_logp = (-torch.rand(len(lengths), longest, generator=g, dtype=torch.float64) * 3).requires_grad_(requires_grad)
    log_v = torch.randn(len(lengths), longest + 1, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
    return rewards, token_logp, log_v, mask


@pytest.mark.parametrize("terminal", [0.0, None, 1.5])
@pytest.mark.parametrize("kappa", [1.0, 0.3])
def test_closed_form_equals_pairwise_oracle_with_gradients(terminal, kappa):
    rewards, token_logp, log_v, mask = batch(requires_grad=True)
    fast = tfpo.subtb_loss(rewards, token_logp, log_v, mask, kappa=kappa, terminal_log_v=terminal)
    slow = tfpo.subtb_loss_pairwise(rewards, token_logp, log_v, mask, kappa=kappa, terminal_log_v=terminal)
    torch.testing.assert_close(fast, slow)
    g_fast = torch.autograd.grad(fast, (token_logp, log_v))
    g_slow = torch.autograd.grad(slow, (token_logp, log_v))
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b)
    assert (g_fast[0][~mask] == 0).all()  # padding gets no gradient


def test_padding_does_not_change_a_sequence_loss():
    rewards, token_logp, log_v, mask = batch(lengths=(5,))
    alone = tfpo.subtb_loss(rewards, token_logp, log_v, mask)
    padded = tfpo.subtb_loss(torch.nn.functional.pad(rewards, (0, 3)), torch.nn.functional.pad(token_logp, (0, 3), value=-9.0),
                             torch.nn.functional.pad(log_v, (0, 3), value=7.0), torch.nn.functional.pad(mask, (0, 3)))
    torch.testing.assert_close(alone, padded)


def test_balanced_policy_has_zero_loss():
    """A policy built so that F(s_m) * prod pi = F(s_n) on every sub-trajectory."""
    rewards, _, log_v, mask = batch(lengths=(6, 3))
    log_q = torch.cat([torch.zeros(2, 1, dtype=torch.float64), torch.cumsum(rewards, 1)], 1)
    log_v = log_v.clone()
    log_v[0, 6] = 0.0
    log_v[1, 3] = 0.0  # the pinned terminal states
    log_f = log_q + log_v
    token_logp = (log_f[:, 1:] - log_f[:, :-1]) * mask
    assert tfpo.subtb_loss(rewards, token_logp, log_v, mask).item() == pytest.approx(0.0, abs=1e-20)
    assert tfpo.subtb_loss(rewards, token_logp + 0.1 * mask, log_v, mask).item() > 1e-4


def test_lambda_variant_reduces_to_uniform_at_one():
    rewards, token_logp, log_v, mask = batch()
    uniform = tfpo.subtb_loss(rewards, token_logp, log_v, mask)
    torch.testing.assert_close(tfpo.subtb_loss_pairwise(rewards, token_logp, log_v, mask, subtb_lambda=1.0), uniform)
    assert tfpo.subtb_loss_pairwise(rewards, token_logp, log_v, mask, subtb_lambda=0.5).item() != pytest.approx(uniform.item())


def test_value_hinge_is_zero_past_the_margin():
    win = torch.tensor([1.0, 0.5, 0.0])
    assert tfpo.value_margin_loss(win, win - 0.2, gamma=0.1).item() == 0.0
    torch.testing.assert_close(tfpo.value_margin_loss(win, win - 0.05, gamma=0.1), torch.tensor(0.05))
    with pytest.raises(ValueError, match="log_v_other: expected shape"):
        tfpo.value_margin_loss(win, win[:2])


def test_first_divergence():
    chosen = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 0]])
    rejected = torch.tensor([[5, 6, 9, 8], [1, 2, 3, 4]])
    chosen_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    rejected_mask = torch.ones(2, 4, dtype=torch.bool)
    assert tfpo.first_divergence(chosen, rejected, chosen_mask, rejected_mask).tolist() == [2, 3]


def test_shape_errors_name_the_argument():
    rewards, token_logp, log_v, mask = batch()
    with pytest.raises(ValueError, match="log_v: expected shape"):
        tfpo.subtb_loss(rewards, token_logp, log_v[:, :-1], mask)
    with pytest.raises(ValueError, match="rewards, token_logp and mask: expected one shape"):
        tfpo.subtb_loss(rewards[:, :-1], token_logp, log_v, mask)
