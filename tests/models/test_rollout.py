
import pytest
import torch

from rlhfkit.data.tokenize import encode_prompt, left_pad
from rlhfkit.models.loading import add_lora, load_causal_lm, load_sequence_classifier, load_tokenizer
from rlhfkit.models.rollout import collect, forward_tokens, response_mask_from_eos, sample
from rlhfkit.models.value import ValueModel
from rlhfkit.models.reward import JudgeReward

TEXTS = ["Hi", "Tell me a story about a dragon who learned to bake bread in a small village.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def prompts(tok):
    return [encode_prompt(tok, [{"role": "user", "content": t}]) for t in TEXTS]


def test_response_mask_ends_at_the_first_eos_even_though_pad_is_eos():
    eos = 2  # SmolLM2: pad_token_id == eos_token_id, so padding cannot be told from EOS by id
    response = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    assert response_mask_from_eos(response, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_sampled_logprobs_equal_a_full_recompute_at_temperature_with_left_padded_prompts(tok, prompts):
    torch.manual_seed(0)
    model = load_causal_lm("tiny")
    query, query_mask = left_pad(prompts, tok.pad_token_id)
    assert len({len(p) for p in prompts}) == 3  # three different amounts of left padding
    s = sample(model, query, query_mask, 12, 0.7, tok.eos_token_id, tok.pad_token_id)
    with torch.no_grad():  # a training-mode pass (not inference mode), as in the PPO epochs
        recomputed, _ = forward_tokens(model, query, query_mask, s["response"].clone(), s["response_mask"].clone(), 0.7)
    mask = s["response_mask"].bool()
    assert torch.exp(recomputed[mask] - s["logprobs"][mask]).sub(1).abs().max() < 1e-5  # ratio == 1
    # at temperature 1 the log-probs are different: the temperature really divides the logits in both places
    with torch.no_grad():
        untempered, _ = forward_tokens(model, query, query_mask, s["response"], s["response_mask"], temperature=1.0)
    assert (untempered[mask] - s["logprobs"][mask]).abs().max() > 1e-2


def test_rows_that_repeat_a_prompt_share_its_pass_and_sample_what_separate_rows_sample(tok, prompts, monkeypatch):
    import rlhfkit.models.rollout as rollout

    model = load_causal_lm("tiny")
    rows = [p for p in prompts for _ in range(3)]  # K = 3 answers per prompt, side by side as the trainers lay them
    query, query_mask = left_pad(rows, tok.pad_token_id)
    first, row_of = rollout.shared_prompts(query, query_mask)
    assert sorted(first.tolist()) == [0, 3, 6]  # the first row of each prompt
    assert torch.equal(first[row_of], torch.tensor([0, 0, 0, 3, 3, 3, 6, 6, 6]))
    draws = torch.rand(20, len(rows), dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def run():
        it = iter(draws)
        return sample(model, query, query_mask, 20, 1.0, tok.eos_token_id, tok.pad_token_id, uniforms=lambda: next(it))

    shared = run()
    real = rollout.shared_prompts
    monkeypatch.setattr(rollout, "shared_prompts", lambda q, m: (None, real(q, m)[1]))  # every row's own prompt pass
    separate = run()
    assert torch.equal(shared["response"], separate["response"])
    mask = shared["response_mask"].bool()
    torch.testing.assert_close(shared["logprobs"][mask], separate["logprobs"][mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared["entropy"][mask], separate["entropy"][mask], atol=1e-4, rtol=1e-5)
    # distinct prompts share nothing
    assert rollout.shared_prompts(*left_pad(prompts, tok.pad_token_id))[0] is None


def test_rows_that_repeat_a_prompt_share_its_pass_in_the_training_and_reference_passes(tok, prompts, monkeypatch):
    """forward_tokens and the value model run each distinct prompt once: the log-probs, values and every LoRA and value
    gradient are those of the rows' own passes, with answers of different lengths and prompts of different padding."""
    import rlhfkit.models.rollout as rollout

    torch.manual_seed(0)
    policy = add_lora(load_causal_lm("tiny"), targets=["q_proj", "v_proj", "up_proj"])
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A's gradient zero: give the adapters a value
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    policy.train()
    value = ValueModel(load_sequence_classifier("tiny"), mean=0.3, std=2.0).train()
    rows = [prompts[i] for i in (0, 1, 0, 2, 1, 0)]  # three prompts, in no order, once to three times
    query, query_mask = left_pad(rows, tok.pad_token_id)
    response = torch.randint(3, tok.vocab_size, (len(rows), 7), generator=torch.Generator().manual_seed(1))
    response_mask = torch.ones_like(response)
    response_mask[1, 3:] = 0
    response_mask[4, 1:] = 0
    calls = []
    real = rollout.shared_prompt_hidden
    monkeypatch.setattr(rollout, "shared_prompt_hidden", lambda *a: calls.append(a[4].tolist()) or real(*a))

    def run():
        logprobs, _ = forward_tokens(policy, query, query_mask, response, response_mask, 0.7)
        values = value(torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1), query.shape[1])
        loss = (logprobs * response_mask).sum() + (values * response_mask).pow(2).sum()
        params = [p for p in [*policy.parameters(), *value.parameters()] if p.requires_grad]
        return logprobs.detach(), values.detach(), torch.autograd.grad(loss, params)

    shared = run()
    assert len(calls) == 2 and sorted(calls[0]) == [0, 1, 3]  # both models took the shared path, three distinct prompts
    monkeypatch.setattr(rollout, "shared_prompts", lambda q, m: (None, None))  # every row's own prompt pass
    separate = run()
    mask = response_mask.bool()
    torch.testing.assert_close(shared[0][mask], separate[0][mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[1][mask], separate[1][mask], atol=1e-5, rtol=0)
    assert len(shared[2]) == len(separate[2]) > 0
    for a, b in zip(shared[2], separate[2]):
        assert b.abs().max() > 0  # every gradient is there to compare
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_prompt_alone_and_inside_a_left_padded_batch_give_the_same_logprobs(tok, prompts):
    torch.manual_seed(1)
    model = load_causal_lm("tiny")
    query, query_mask = left_pad(prompts, tok.pad_token_id)
    s = sample(model, query, query_mask, 10, 0.7, tok.eos_token_id, tok.pad_token_id)
    with torch.no_grad():
        batch_lp, _ = forward_tokens(model, query, query_mask, s["response"], s["response_mask"], 0.7)
    for i, p in enumerate(prompts):
        q1, m1 = left_pad([p], tok.pad_token_id)
        with torch.no_grad():
            alone, _ = forward_tokens(model, q1, m1, s["response"][i : i + 1], s["response_mask"][i : i + 1], 0.7)
        mask = s["response_mask"][i].bool()
        torch.testing.assert_close(alone[0][mask], batch_lp[i][mask], atol=1e-5, rtol=0)


def test_lora_reference_is_the_policy_with_adapters_disabled(tok, prompts):
    torch.manual_seed(2)
    base = load_causal_lm("tiny")
    plain = load_causal_lm("tiny")  # an independent copy of the starting weights
    policy = add_lora(base, r=4, alpha=8)
    with torch.no_grad():  # move the adapters away from their identity init
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    r, scores = collect(policy, tok, prompts, [{"prompt": t} for t in TEXTS], JudgeReward("length"),
                        max_new_tokens=8, temperature=0.7)
    with torch.no_grad():
        expected, _ = forward_tokens(plain, r.query, r.query_mask, r.response, r.response_mask, 0.7)
    mask = r.response_mask.bool()
    torch.testing.assert_close(r.ref_logprobs[mask], expected[mask], atol=1e-5, rtol=0)
    assert (r.logprobs[mask] - r.ref_logprobs[mask]).abs().max() > 1e-3  # the policy itself did use its adapters
    assert scores.shape == (3,) and r.values.shape == r.response.shape
    assert r.values.abs().sum() == 0  # no value model given: zeros (the caller supplies one)


def test_value_model_applies_the_normalised_reward_head_at_every_response_position(tok, prompts):
    classifier = load_sequence_classifier("tiny")
    mean, std = 0.3, 2.0
    raw = load_sequence_classifier("tiny")
    value = ValueModel(classifier, mean, std)
    response = torch.tensor([[100, 200, 300, 400]])
    ids = torch.tensor([prompts[1]])
    full = torch.cat([ids, response], 1)
    with torch.no_grad():
        values = value(full, torch.ones_like(full), ids.shape[1])
        for t in range(response.shape[1]):  # the value before token t = the reward model's score of the text so far
            prefix = full[:, : ids.shape[1] + t]
            score = raw(input_ids=prefix, attention_mask=torch.ones_like(prefix)).logits[0, 0]
            assert values[0, t].item() == pytest.approx(((score - mean) / std).item(), abs=1e-4)


def test_the_decoding_loop_passes_its_cache_by_the_keyword_the_installed_transformers_takes(tok, prompts):
    import warnings

    model = load_causal_lm("tiny")
    query, query_mask = left_pad(prompts, tok.pad_token_id)
    with warnings.catch_warnings():  # a deprecated keyword warns (and a removed one would raise)
        warnings.filterwarnings("error", message=".*past_key_values.*")
        s = sample(model, query, query_mask, 4, 1.0, tok.eos_token_id, tok.pad_token_id)
    assert s["response"].shape == (len(prompts), 4)
