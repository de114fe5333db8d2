"""The fast paths of the PPO update compute what the plain ones do."""

import pytest
import torch

from rlhfkit.data.tokenize import encode_prompt, left_pad, position_ids_from_mask
from rlhfkit.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
from rlhfkit.models.rollout import Rollout, causal_parts, response_hidden, sample, token_logprobs
from rlhfkit.models.value import ValueModel
from rlhfkit.stages.ppo import ppo_loss
from tests.stages.test_ppo import tiny_cfg

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
    from rlhfkit.accel.head import fp32_logits

    cache = "_rlhfkit_fp32"
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fp32_logits(head)(hidden)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, hidden.float() @ head.weight.float().T, atol=1e-5)  # no bf16 rounding of the output
    first = getattr(head, cache)[1]
    fp32_logits(head)(hidden)
    assert getattr(head, cache)[1] is first  # cached while the weight is unchanged
    # made inside inference mode, the cached copy still serves a pass that back-propagates
    x = hidden.float().requires_grad_(True)
    fp32_logits(head)(x).sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        head.weight.add_(1.0)  # a changed weight is cast again
    assert torch.allclose(fp32_logits(head)(hidden), hidden.float() @ head.weight.float().T, atol=1e-4)


def test_the_fused_head_through_onednn_gives_the_plain_routes_log_probs_and_gradients(onednn_route):
    from rlhfkit.accel import cpu_linear
    from rlhfkit.accel.head import linear_logprobs
    from rlhfkit.rl.losses import logprobs_from_logits

    if not cpu_linear.onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    torch.manual_seed(0)
    for bias in (False, True):
        hidden = torch.randn(2, 7, 64, requires_grad=True)
        weight = torch.randn(300, 64, requires_grad=True)
        b = torch.randn(300, requires_grad=True) if bias else None
        assert cpu_linear.applies(hidden, weight)  # 64 wide: the oneDNN route
        labels = torch.randint(0, 300, (2, 7))
        inputs = [hidden, weight] + ([b] if bias else [])
        plain = logprobs_from_logits(hidden @ weight.T + (b if bias else 0), labels, 0.7)  # MKL's products
        fast = linear_logprobs(hidden, weight, b, labels, 0.7, chunk_rows=4)  # 4 chunks: ∂W summed over them
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
        g = torch.randn(2, 7)
        for a, c in zip(torch.autograd.grad((fast * g).sum(), inputs), torch.autograd.grad((plain * g).sum(), inputs)):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_fused_head_logprobs_equal_the_plain_route_in_value_and_gradient():
    from rlhfkit.accel.head import linear_logprobs
    from rlhfkit.rl.losses import logprobs_from_logits

    torch.manual_seed(0)
    for bias in (False, True):
        hidden = torch.randn(3, 7, 16, requires_grad=True)
        weight = torch.randn(50, 16, requires_grad=True)
        b = torch.randn(50, requires_grad=True) if bias else None
        labels = torch.randint(0, 50, (3, 7))
        g = torch.randn(3, 7)
        inputs = [hidden, weight] + ([b] if bias else [])
        plain = logprobs_from_logits(torch.nn.functional.linear(hidden, weight, b), labels, 0.7)
        fused = linear_logprobs(hidden, weight, b, labels, 0.7, chunk_rows=4)  # several chunks, the last one short
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
        for a, c in zip(torch.autograd.grad((fused * g).sum(), inputs), torch.autograd.grad((plain * g).sum(), inputs)):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    out = linear_logprobs(hidden, weight, None, labels, 0.7)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):  # its buffers are consumed: a second backward would be wrong
        out.sum().backward()


@pytest.mark.parametrize("lora", [False, True])
def test_the_training_pass_gives_the_plain_routes_gradients_on_every_parameter(lora):
    from rlhfkit.models.loading import add_lora
    from rlhfkit.rl.losses import logprobs_from_logits

    torch.manual_seed(0)
    model = load_causal_lm("tiny")  # its head is tied to the embeddings: both routes' gradients meet there
    if lora:
        model = add_lora(model)
    query, response = torch.randint(5, 200, (3, 9)), torch.randint(5, 200, (3, 6))
    query_mask = torch.ones_like(query)
    query_mask[0, :3] = 0
    g = torch.randn(3, 6)
    grads = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        backbone, lm_head = causal_parts(model)
        hidden = response_hidden(backbone, torch.cat([query, response], 1), torch.cat([query_mask, torch.ones_like(response)], 1), 9)
        logprobs = token_logprobs(lm_head, hidden, response, 0.7) if fused else logprobs_from_logits(lm_head(hidden), response, 0.7)
        (logprobs * g).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-5)


def test_logsumexp_and_the_sampler_keep_exp_off_its_slow_path_without_changing_the_numbers():
    from rlhfkit.rl.losses import logsumexp

    torch.manual_seed(0)
    x = torch.randn(4, 1000) * 60  # spans hundreds of nats: most e^(x − max) underflow
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, -1), atol=1e-5, rtol=0)


def test_short_cpu_sequences_take_the_math_attention_kernel_and_match_the_default(monkeypatch, request):
    from rlhfkit.accel import attention
    from rlhfkit.accel.attention import short_sequence_attention

    monkeypatch.setenv("RLHFKIT_MATH_ATTENTION_MAX_TOKENS", "256")
    attention.math_attention_max_tokens.cache_clear()
    request.addfinalizer(attention.math_attention_max_tokens.cache_clear)  # the setting is not this process's choice
    monkeypatch.setattr(attention, "measure_kernels", lambda *a, **k: pytest.fail("a setting needs no measurement"))
    short, long = torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, 257, dtype=torch.long)
    assert type(short_sequence_attention(long)).__name__ == "nullcontext"
    assert type(short_sequence_attention(short)).__name__ != "nullcontext"
    torch.manual_seed(0)
    model = load_causal_lm("tiny")
    backbone, _ = causal_parts(model)
    ids = torch.randint(5, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        math = response_hidden(backbone, ids, mask, 6)
        default = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state[:, 5:-1]
    torch.testing.assert_close(math, default, atol=1e-5, rtol=1e-4)


def test_every_stage_keeps_freed_memory_for_reuse_on_glibc(monkeypatch):
    import platform

    from rlhfkit.accel.runtime import keep_freed_memory

    keep_freed_memory.cache_clear()
    monkeypatch.setenv("RLHFKIT_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False  # the opt-out
    keep_freed_memory.cache_clear()
    monkeypatch.delenv("RLHFKIT_KEEP_FREED_MEMORY")
    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_the_two_level_inverse_cdf_draws_the_tokens_a_whole_row_cumulative_sum_draws():
    from rlhfkit.accel.sampler import inverse_cdf

    torch.manual_seed(0)
    for vocab in (49152, 1000, 7):  # whole blocks, a padded last block, fewer tokens than a block
        probs = torch.log_softmax(torch.randn(16, vocab) * 4 / 0.7, -1).clamp(min=-80).exp()
        probs[:, 3] = 0.0  # a zero-probability token is never drawn
        for _ in range(20):
            u = torch.rand(16, dtype=torch.float64)
            cdf = probs.double().cumsum(-1)
            whole = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1).clamp(max=vocab - 1)
            got = inverse_cdf(probs, u, block=256)
            assert torch.equal(got, whole)
            assert not (got == 3).any()
