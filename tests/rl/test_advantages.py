import pytest
import torch

from rlhfkit.rl.advantages import (
    AdaptiveKLController,
    FixedKLController,
    discounted_returns,
    gae,
    group_advantages,
    kl_estimate,
    kl_penalty_rewards,
    leave_one_out,
    masked_mean,
    masked_var,
    masked_whiten,
)


def test_masked_statistics_ignore_padded_positions():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert masked_mean(x, mask).item() == pytest.approx(valid.mean().item())
    assert masked_var(x, mask).item() == pytest.approx(valid.var().item())
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(valid.var(unbiased=False).item())
    assert torch.allclose(masked_mean(x, mask, dim=1), torch.tensor([2.0, 4.5]))


def test_whitening_gives_zero_mean_unit_std_and_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 3 + 2
    mask = torch.ones(4, 6)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert torch.all(w[mask == 0] == 0)
    changed = x.clone()
    changed[mask == 0] = 1e6  # garbage in the padding
    assert torch.equal(masked_whiten(changed, mask), w)


def test_whitening_without_mean_shift_keeps_the_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    w = masked_whiten(x, torch.ones_like(x), shift_mean=False)
    assert w.mean().item() == pytest.approx(2.5)
    assert w.std().item() == pytest.approx(1.0, abs=1e-5)


def test_gae_matches_hand_computed_values_for_gamma_1_lambda_095_including_a_padded_row():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 9.0]])  # 9.0 sits on padding and must not matter
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: δ2 = 2 − 1.5 = 0.5; δ1 = 0 + 1.5 − 1 = 0.5; δ0 = 1 + 1 − 0.5 = 1.5
    #        A2 = 0.5, A1 = 0.5 + 0.95·0.5 = 0.975, A0 = 1.5 + 0.95·0.975 = 2.42625
    # row 1: the value after the last valid token is 0: δ1 = 2 + 0 − 1 = 1; δ0 = 1 + 1 − 0.5 = 1.5
    #        A1 = 1, A0 = 1.5 + 0.95 = 2.45, padding A2 = 0
    expected = torch.tensor([[2.42625, 0.975, 0.5], [2.45, 1.0, 0.0]])
    assert torch.allclose(adv, expected)
    assert torch.allclose(ret, adv + values)


def test_gae_matches_hand_computed_values_for_gamma_09_lambda_05():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.5)
    # δ2 = 0.5; δ1 = 0.9·1.5 − 1 = 0.35; δ0 = 1 + 0.9·1 − 0.5 = 1.4
    # A2 = 0.5, A1 = 0.35 + 0.45·0.5 = 0.575, A0 = 1.4 + 0.45·0.575 = 1.65875
    assert torch.allclose(adv, torch.tensor([[1.65875, 0.575, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[2.15875, 1.575, 2.0]]))


def test_gae_padding_changes_nothing_and_gets_zero_advantage():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    adv, _ = gae(rewards, values, mask)
    rewards2, values2 = rewards.clone(), values.clone()
    rewards2[mask == 0] = 50.0
    values2[mask == 0] = -50.0
    adv2, _ = gae(rewards2, values2, mask)
    assert torch.equal(adv, adv2)
    assert torch.all(adv[mask == 0] == 0)


def test_gym_dones_stop_bootstrapping_and_next_value_bootstraps_the_end():
    rewards = torch.ones(1, 3)
    values = torch.zeros(1, 3)
    next_value = torch.tensor([10.0])
    adv, _ = gae(rewards, values, gamma=1.0, lam=1.0, dones=torch.tensor([[0.0, 1.0, 0.0]]), next_value=next_value)
    # the episode ended at t=1: t=0..1 see only their own rewards; t=2 bootstraps from next_value
    assert torch.allclose(adv, torch.tensor([[2.0, 1.0, 11.0]]))
    adv_no_done, _ = gae(rewards, values, gamma=1.0, lam=1.0, next_value=next_value)
    assert torch.allclose(adv_no_done, torch.tensor([[13.0, 12.0, 11.0]]))


def test_gae_equals_discounted_return_minus_value_when_lambda_is_1():
    torch.manual_seed(1)
    rewards, values = torch.randn(2, 4), torch.randn(2, 4)
    adv, ret = gae(rewards, values, gamma=0.9, lam=1.0)
    for t in range(4):
        discounted = sum(0.9 ** (k - t) * rewards[:, k] for k in range(t, 4))
        assert torch.allclose(ret[:, t], discounted, atol=1e-6)


def test_adaptive_kl_controller_raises_beta_above_target_and_lowers_it_below():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=256)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    high = ctl.value
    ctl.update(current_kl=5.4, n_steps=256)  # error −0.1
    assert ctl.value == pytest.approx(high * (1 - 0.1 * 256 / 10000))
    assert ctl.value < high


def test_fixed_kl_controller_never_changes():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05


def test_kl_controllers_state_dict_round_trip():
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    ctl.update(9.0, 512)
    fresh = AdaptiveKLController(1.0, 1.0, 1.0)
    fresh.load_state_dict(ctl.state_dict())
    assert (fresh.value, fresh.target, fresh.horizon) == (ctl.value, 6.0, 10000.0)
    fixed = FixedKLController(1.0)
    fixed.load_state_dict(FixedKLController(0.3).state_dict())
    assert fixed.value == 0.3


def test_kl_penalty_rewards_put_minus_beta_kl_on_every_token_and_the_score_on_the_last():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -7.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = torch.tensor([3.0, -2.0])
    rewards, kl, non_score = kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(non_score, -0.1 * kl)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 3.0], [-0.1, -2.0, 0.0]]))


def test_leave_one_out_subtracts_the_mean_of_the_prompts_other_responses():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    assert torch.allclose(leave_one_out(scores, 3), torch.tensor([1 - 2.5, 2 - 2.0, 3 - 1.5, 0.0, 0.0, 0.0]))
    # A per-prompt offset (all a Bradley–Terry model cannot pin down) changes nothing.
    shifted = scores + torch.tensor([5.0, 5.0, 5.0, -7.0, -7.0, -7.0])
    assert torch.allclose(leave_one_out(shifted, 3), leave_one_out(scores, 3))
    assert torch.allclose(leave_one_out(torch.tensor([4.0, 1.0]), 2), torch.tensor([3.0, -3.0]))
    with pytest.raises(ValueError, match="groups of k=4"):
        leave_one_out(scores, 4)


def test_grpo_advantages_centre_each_group_and_divide_by_its_std_or_not_as_dr_grpo():
    scores = torch.tensor([1.0, 3.0, 5.0, 7.0, 2.0, 2.0])  # two groups of three
    # group 1: mean 3, std (unbiased) 2 → −1, 0, 1; group 2: mean 11/3, std √(25/3) ≈ 2.887
    adv = group_advantages(scores, 3)
    assert adv[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)
    assert adv[3:].tolist() == pytest.approx([10 / 3 / 2.8868, -5 / 3 / 2.8868, -5 / 3 / 2.8868], abs=1e-3)
    assert group_advantages(scores, 3, scale=False).tolist() == pytest.approx([-2.0, 0.0, 2.0, 10 / 3, -5 / 3, -5 / 3])
    assert group_advantages(torch.tensor([4.0, 4.0]), 2).tolist() == [0.0, 0.0]  # equal answers: no signal, no NaN
    with pytest.raises(ValueError, match="groups of k=3"):
        group_advantages(torch.zeros(4), 3)


def test_the_three_kl_estimators_on_hand_computed_log_ratios():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])  # log r = 0.5, −1, 0
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0, 0.0])
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5, 0.0])
    # k3 = (1/r − 1) + log r: e^−0.5 − 1 + 0.5, e^1 − 1 − 1, 0; never negative
    import math
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_estimate(logp, ref, "k4")


def test_discounted_returns_sum_the_rewards_to_go_and_stop_at_padding():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 9.0], [0.0, 0.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert discounted_returns(rewards, mask).tolist() == [[6.0, 5.0, 3.0, 0.0], [5.0, 5.0, 5.0, 0.0]]
    assert discounted_returns(rewards, mask, gamma=0.5)[0].tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]


def test_kl_penalty_rewards_take_the_chosen_estimator():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    k1, _, _ = kl_penalty_rewards(logp, ref, torch.tensor([1.0]), mask, beta=0.1)
    k2, kl2, _ = kl_penalty_rewards(logp, ref, torch.tensor([1.0]), mask, beta=0.1, estimator="k2")
    assert k1[0].tolist() == pytest.approx([-0.05, 0.1 + 1.0])
    assert kl2[0].tolist() == pytest.approx([0.125, 0.5]) and k2[0].tolist() == pytest.approx([-0.0125, -0.05 + 1.0])
