"""The fast paths of the PPO update compute what the plain ones do."""

import torch

from rlhfkit.data.tokenize import encode_prompt, left_pad
from rlhfkit.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
from rlhfkit.ppo.rollout import Rollout, causal_parts, response_hidden, sample, token_logprobs
from rlhfkit.ppo.trainer import ppo_loss
from rlhfkit.ppo.value import ValueModel
from tests.ppo.test_trainer import tiny_cfg

TEXTS = ["Hi", "Tell me a story about a dragon who learned to bake bread.", "Why is the sky blue?"]


def tiny_batch():
    torch.manual_seed(0)
    tok = load_tokenizer("tiny")
    policy = load_causal_lm("tiny")
    query, query_mask = left_pad([encode_prompt(tok, [{"role": "user", "content": t}]) for t in TEXTS], tok.pad_token_id)
    s = sample(policy, query, query_mask, 10, 0.7, tok.eos_token_id, tok.pad_token_id)
    return tok, policy, query, query_mask, s


def test_sampler_entropy_and_logprobs_equal_a_recompute_from_the_full_logits():
    _, policy, query, query_mask, s = tiny_batch()
    backbone, lm_head = causal_parts(policy)
    width = s["response"].shape[1]
    with torch.no_grad():
        hidden = response_hidden(backbone, torch.cat([query, s["response"]], 1),
                                 torch.cat([query_mask, torch.ones_like(s["response"])], 1), query.shape[1])
        logprobs, entropy = token_logprobs(lm_head, hidden, s["response"], 0.7, with_entropy=True)
    mask = s["response_mask"].bool()
    assert s["entropy"].shape == (len(TEXTS), width)
    torch.testing.assert_close(s["logprobs"][mask], logprobs[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(s["entropy"][mask], entropy[mask], atol=1e-4, rtol=1e-5)


def test_policy_then_value_backward_gives_the_joint_backward_gradients(tmp_path):
    _, policy, query, query_mask, s = tiny_batch()
    value = ValueModel(load_sequence_classifier("tiny"), 0.1, 2.0)
    mask = s["response_mask"].float()
    torch.manual_seed(1)
    noise = torch.randn_like(mask)
    r = Rollout(query, query_mask, s["response"], s["response_mask"], s["logprobs"] * mask, s["logprobs"] * mask,
                noise * mask, s["entropy"], ["x"] * len(TEXTS), torch.ones(len(TEXTS), dtype=torch.bool))
    adv = {"advantages": torch.randn_like(mask) * mask, "returns": torch.randn_like(mask) * mask}
    cfg = tiny_cfg(tmp_path / "p.jsonl", tmp_path / "run")
    params = list(policy.parameters()) + list(value.parameters())
    idx = torch.tensor([2, 0])

    def grads(split: bool):
        for p in params:
            p.grad = None
        if split:
            loss, _, _ = ppo_loss(cfg, policy, value, None, r, adv, idx, backward_scale=0.5)
        else:
            loss, _, _ = ppo_loss(cfg, policy, value, None, r, adv, idx)
            (loss * 0.5).backward()
        return loss.detach(), [p.grad.clone() for p in params if p.grad is not None]

    loss_joint, g_joint = grads(split=False)
    loss_split, g_split = grads(split=True)
    assert float(loss_joint) == float(loss_split)
    assert len(g_joint) == len(g_split) and len(g_joint) > 10  # both the policy's and the value model's parameters
    for a, b in zip(g_joint, g_split):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_logits_are_fp32_under_bf16_autocast_and_a_frozen_bf16_head_is_cast_once():
    from rlhfkit.ppo.rollout import fp32_logits

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fp32_logits(head)(hidden)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, hidden.float() @ head.weight.float().T, atol=1e-5)  # no bf16 rounding of the output
    first = head._rlhfkit_fp32[1]
    fp32_logits(head)(hidden)
    assert head._rlhfkit_fp32[1] is first  # cached while the weight is unchanged
    # made inside inference mode, the cached copy still serves a pass that back-propagates
    x = hidden.float().requires_grad_(True)
    fp32_logits(head)(x).sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        head.weight.add_(1.0)  # a changed weight is cast again
    assert torch.allclose(fp32_logits(head)(hidden), hidden.float() @ head.weight.float().T, atol=1e-4)
