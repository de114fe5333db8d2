import copy
import sys
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.models.generation import generate_ids, make_generator
from rlhfkit.models.loading import add_lora, load_causal_lm, load_tokenizer
from rlhfkit.models.vllm_backend import VLLMGenerator, hf_weights


class FakeEngine:
    """Stands in for the vLLM model: records the (name, tensor) pairs its load_weights receives."""

    def __init__(self):
        self.received: list[tuple[str, torch.Tensor]] = []
        self.prefix_resets = 0

    def load_weights(self, weights):
        self.received.extend((name, t.clone()) for name, t in weights)

    def reset_prefix_cache(self):
        self.prefix_resets += 1


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError


def lora_policy():
    model = add_lora(load_causal_lm("tiny"), r=4, alpha=8, targets=["q_proj", "v_proj"])
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def test_asking_for_vllm_without_it_is_one_clear_error_naming_pip_install(no_vllm):
    tok = load_tokenizer("tiny")
    with pytest.raises(ConfigError, match=r"pip install vllm"):
        make_generator("vllm", "default", tok)
    with pytest.raises(ConfigError, match=r"pip install vllm"):
        VLLMGenerator("default")


def test_rlhf_generate_with_vllm_missing_exits_with_one_line(no_vllm, monkeypatch, capsys):
    from rlhfkit.cli import main

    monkeypatch.setattr(sys, "argv", ["rlhf", "generate", "--model", "tiny", "--prompt", "hi", "--generation", "vllm"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install vllm" in err and "Traceback" not in err


def test_an_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="generation: expected transformers or vllm, got 'onnx'"):
        make_generator("onnx", "tiny", load_tokenizer("tiny"))


def test_full_policy_weights_reach_the_engine_under_their_transformers_names_and_values():
    policy = load_causal_lm("tiny")
    engine = FakeEngine()
    n = VLLMGenerator("unused", llm=engine).load_weights(policy)
    got = dict(engine.received)
    want = policy.state_dict()
    assert n == len(got) == len(want) and set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert engine.prefix_resets == 1  # KV computed with the old weights is dropped


def test_lora_policy_is_merged_before_sync_without_changing_the_training_model():
    policy = lora_policy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    engine = FakeEngine()
    VLLMGenerator("unused", llm=engine).load_weights(policy)
    got = dict(engine.received)

    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert set(got) == set(merged) == set(load_causal_lm("tiny").state_dict())  # plain HF names, no lora_/base_layer
    assert all(torch.allclose(got[k], merged[k], atol=1e-6) for k in merged)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(got[q], load_causal_lm("tiny").state_dict()[q])  # the adapter's update is in it
    after = policy.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_ddp_wrapped_policy_syncs_the_inner_model():
    policy = load_causal_lm("tiny")
    wrapped = SimpleNamespace(module=policy)
    assert set(hf_weights(wrapped)) == set(policy.state_dict())


def test_vllm_generate_asks_for_n_samples_and_returns_them_prompt_major(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kw: kw))
    calls = []

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm):
            calls.append((prompts, params))
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=(p["prompt_token_ids"][0], j, 2))
                                             for j in range(params["n"])]) for p in prompts]

    out = VLLMGenerator("unused", llm=FakeLLM()).generate([[7, 8], [9]], max_new_tokens=5, temperature=0.7, n=2)
    assert out == [[7, 0, 2], [7, 1, 2], [9, 0, 2], [9, 1, 2]]
    assert calls[0][1] == {"n": 2, "max_tokens": 5, "temperature": 0.7, "top_p": 1.0, "top_k": -1}


def test_transformers_backend_gives_n_answers_per_prompt_and_sync_is_a_no_op():
    tok = load_tokenizer("tiny")
    model = load_causal_lm("tiny")
    gen = make_generator("transformers", "tiny", tok, model=model)
    prompts = [[1, 2, 3], [4, 5]]
    out = gen.generate(prompts, max_new_tokens=4, n=2)
    assert out == generate_ids(model, tok, [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]], 4)
    assert gen.load_weights(model) == 0
