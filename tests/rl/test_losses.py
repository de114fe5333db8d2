import math

import pytest
import torch

from rlhfkit.rl.losses import (
    aggregate,
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    policy_loss,
    value_loss,
)


def _grad_of_policy_loss(log_ratio: float, advantage: float, clip_eps: float = 0.2) -> float:
    logprobs = torch.tensor([log_ratio], requires_grad=True)
    loss, _ = policy_loss(logprobs, torch.zeros(1), torch.tensor([advantage]), clip_eps=clip_eps)
    loss.backward()
    return logprobs.grad.item()


def test_clipping_zeroes_the_gradient_only_beyond_the_clip_in_the_direction_of_the_advantage():
    up, down = math.log(1.5), math.log(0.5)
    # positive advantage: no incentive to push the ratio above 1+ε, but a ratio below 1−ε still learns
    assert _grad_of_policy_loss(up, advantage=1.0) == 0.0
    assert _grad_of_policy_loss(down, advantage=1.0) != 0.0
    # negative advantage: the mirror image
    assert _grad_of_policy_loss(down, advantage=-1.0) == 0.0
    assert _grad_of_policy_loss(up, advantage=-1.0) != 0.0
    # inside the trust region the gradient is the plain policy gradient −A·ratio
    assert _grad_of_policy_loss(0.05, advantage=2.0) == pytest.approx(-2.0 * math.exp(0.05))


def test_policy_loss_value_and_stats_on_a_small_example():
    logprobs = torch.log(torch.tensor([1.5, 1.0, 0.9]))
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss, stats = policy_loss(logprobs, torch.zeros(3), adv, clip_eps=0.2)
    # token 0 clipped to 1.2 → −1.2; token 1 ratio 1 → 1.0; token 2 ratio 0.9 → −1.8
    assert loss.item() == pytest.approx((-1.2 + 1.0 - 1.8) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    ratios = torch.tensor([1.5, 1.0, 0.9])
    assert stats["approx_kl"].item() == pytest.approx(((ratios - 1) - ratios.log()).mean().item())
    assert stats["ratio_mean"].item() == pytest.approx(ratios.mean().item())
    assert stats["ratio_max"].item() == pytest.approx(1.5)


def test_masked_tokens_carry_no_policy_or_value_loss_and_no_gradient():
    torch.manual_seed(0)
    logprobs = torch.randn(2, 4, requires_grad=True)
    values = torch.randn(2, 4, requires_grad=True)
    old_lp, adv, old_v, ret = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    pl, pstats = policy_loss(logprobs, old_lp, adv, mask)
    vl, _ = value_loss(values, old_v, ret, mask)
    (pl + vl).backward()
    assert torch.all(logprobs.grad[mask == 0] == 0)
    assert torch.all(values.grad[mask == 0] == 0)
    # garbage on the padding changes nothing
    adv2, ret2 = adv.clone(), ret.clone()
    adv2[mask == 0] = 1e4
    ret2[mask == 0] = -1e4
    assert policy_loss(logprobs, old_lp, adv2, mask)[0].item() == pytest.approx(pl.item())
    assert value_loss(values, old_v, ret2, mask)[0].item() == pytest.approx(vl.item())
    big = logprobs.detach().clone()
    big[mask == 0] = 50.0
    assert policy_loss(big, old_lp, adv, mask)[1]["ratio_max"].item() == pytest.approx(pstats["ratio_max"].item())


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_errors():
    old = torch.tensor([0.0, 0.0])
    values = torch.tensor([1.0, 0.1], requires_grad=True)
    returns = torch.tensor([0.0, 0.1])
    loss, stats = value_loss(values, old, returns, clip_eps=0.2)
    # value 0 moved to 1.0 (clipped 0.2): errors 1.0² vs 0.2² → 1.0; value 1: both 0
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.0) / 2)
    assert stats["vf_clipfrac"].item() == 0.0
    # moving away from a return outside the clip range: the clipped error is larger, gradient stops
    values = torch.tensor([0.5], requires_grad=True)
    loss, stats = value_loss(values, torch.zeros(1), torch.tensor([1.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8**2)
    assert stats["vf_clipfrac"].item() == 1.0
    loss.backward()
    assert values.grad.item() == 0.0
    unclipped, _ = value_loss(torch.tensor([0.5]), torch.zeros(1), torch.tensor([1.0]), clip_eps=None)
    assert unclipped.item() == pytest.approx(0.5 * 0.25)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_logits_match_log_softmax_gather(temperature):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50) * 4
    labels = torch.randint(0, 50, (3, 7))
    expected = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    got = logprobs_from_logits(logits, labels, temperature=temperature, chunk_size=4)  # 21 rows: uneven chunks
    assert got.shape == (3, 7)
    assert torch.allclose(got, expected, atol=1e-5)


def test_logprobs_from_logits_upcast_half_precision_and_pass_gradients():
    torch.manual_seed(0)
    logits = (torch.randn(2, 5, 30) * 3).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 30, (2, 5))
    got = logprobs_from_logits(logits, labels, chunk_size=3)
    assert got.dtype == torch.float32
    expected = torch.log_softmax(logits.detach().float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, expected, atol=1e-5)
    got.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_entropy_matches_direct_computation_and_is_stable_for_large_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10) * 3
    p = torch.softmax(logits, -1)
    direct = -(p * torch.log(p)).sum(-1)
    assert torch.allclose(entropy_from_logits(logits), direct, atol=1e-5)
    uniform = torch.full((1, 8), 1e4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(8), abs=1e-4)
    peaked = torch.tensor([[1e4, -1e4, -1e4]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_explained_variance_is_1_for_perfect_values_0_for_the_mean_and_ignores_padding():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)
    assert math.isnan(explained_variance(torch.zeros(3), torch.ones(3)).item())


def test_loss_aggregation_by_token_by_answer_or_by_a_constant_length():
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert float(aggregate(per_token, mask, "token")) == pytest.approx(8 / 5)  # every token weighs the same
    assert float(aggregate(per_token, mask, "sequence")) == pytest.approx((1.0 + 4.0) / 2)  # every answer weighs the same
    assert float(aggregate(per_token, mask, "constant", max_len=8)) == pytest.approx(8 / (2 * 8))  # Dr. GRPO
    with pytest.raises(ValueError, match="token, sequence or constant"):
        aggregate(per_token, mask, "mean")


def test_dpo_and_ipo_losses_on_hand_computed_log_probs():
    from rlhfkit.rl.losses import dpo_loss

    pc, pr, rc, rr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0]), torch.tensor([-3.5, -5.0]), torch.tensor([-3.5, -3.0])
    # h = (log π − log π_ref)(chosen) − (…)(rejected): (0.5 − (−0.5)) = 1, (0 − (−1)) = 1
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-0.5))] * 2)  # −log σ(β·h)
    assert chosen.tolist() == pytest.approx([0.25, 0.0]) and rejected.tolist() == pytest.approx([-0.25, -0.5])
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert smoothed.tolist() == pytest.approx([0.9 * math.log(1 + math.exp(-0.5)) + 0.1 * math.log(1 + math.exp(0.5))] * 2)
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")
    assert ipo.tolist() == pytest.approx([(1 - 1 / (2 * 0.5)) ** 2] * 2)  # h − 1/(2β) = 0: IPO is content at h = 1/(2β)
    with pytest.raises(ValueError, match="sigmoid or ipo"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")


def test_rpo_s_term_is_the_chosen_answer_s_negative_log_likelihood_per_token():
    from rlhfkit.rl.losses import chosen_nll

    # summed log-probs −6 over 3 tokens and −2 over 4: NLL per token 2 and 0.5; averaged ones (IPO) pass through
    assert chosen_nll(torch.tensor([-6.0, -2.0]), torch.tensor([3.0, 4.0])).tolist() == pytest.approx([2.0, 0.5])
    assert chosen_nll(torch.tensor([-1.5]), torch.tensor([1.0])).tolist() == pytest.approx([1.5])
    assert chosen_nll(torch.tensor([-1.5]), torch.tensor([0.0])).tolist() == pytest.approx([1.5])  # an empty answer: no ÷0


def test_kto_loss_against_a_hand_computed_example():
    import math

    from rlhfkit.rl.losses import kto_loss, kto_reference_point

    policy, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])  # log-ratios r = +0.5 and −1.0
    desirable = torch.tensor([True, False])
    kl = kto_reference_point(torch.tensor([-3.0, -2.0]), torch.tensor([-3.1, -2.1]))
    assert float(kl) == pytest.approx(0.1)  # the mismatched answers' mean log-ratio
    assert float(kto_reference_point(torch.tensor([-3.0]), torch.tensor([-2.0]))) == 0.0  # never below 0
    losses, rewards = kto_loss(policy, ref, desirable, kl, beta=0.5, desirable_weight=2.0, undesirable_weight=1.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses.tolist() == pytest.approx([2.0 * (1 - sig(0.5 * (0.5 - 0.1))), 1 - sig(0.5 * (0.1 + 1.0))])
    assert rewards.tolist() == pytest.approx([0.25, -0.5])
    # pushing a desirable answer up (or an undesirable one down) lowers its loss
    up, _ = kto_loss(policy + torch.tensor([1.0, -1.0]), ref, desirable, kl, beta=0.5)
    base, _ = kto_loss(policy, ref, desirable, kl, beta=0.5)
    assert (up < base).all()
