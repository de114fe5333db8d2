"""PPO's rollout through an inference engine (``generation: vllm``): the sync logic with a fake engine here, the real
vLLM where a GPU and vLLM are present."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import PPOConfig
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.rollout import left_pad, sample
from rlhfkit.models.vllm_backend import hf_weights
from rlhfkit.stages.ppo import train_ppo
from rlhfkit.tracking import read_metrics
from tests.conftest import write_jsonl

PROMPTS = ["Hi", "Tell me a story about a dragon.", "Why is the sky blue?", "Name a colour.", "Count to three.", "Say yes."]


class FakeLLM:
    """vLLM's ``LLM`` as far as PPO uses it, on the CPU: a transformers model that samples with the project's sampler
    and reports each sampled token's log-prob after the temperature; ``load_weights`` replaces its weights by name
    (strictly: every name must be the model's own), sleep and wake are recorded. ``stale``: it ignores new weights."""

    made: list["FakeLLM"] = []
    stale = False

    def __init__(self, model: str, **kwargs):
        self.model, self.tok, self.kwargs = load_causal_lm(model), load_tokenizer(model), kwargs
        self.loads, self.calls, self.temperatures = 0, [], []
        FakeLLM.made.append(self)

    @torch.inference_mode()
    def generate(self, prompts, params, use_tqdm=False):
        assert self.calls[-1:] != ["sleep"], "sampled while asleep"
        # the whole distribution at the policy's temperature, one answer each, the sampled token's log-prob
        assert (params["n"], params["top_p"], params["top_k"], params["logprobs"]) == (1, 1.0, -1, 0), params
        self.temperatures.append(params["temperature"])
        query, mask = left_pad([p["prompt_token_ids"] for p in prompts], self.tok.pad_token_id)
        s = sample(self.model, query, mask, params["max_tokens"], params["temperature"], self.tok.eos_token_id,
                   self.tok.pad_token_id)
        outs = []
        for row, keep, lps in zip(s["response"], s["response_mask"], s["logprobs"]):
            ids = row[keep.bool()].tolist()
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(
                token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=float(lp))} for t, lp in zip(ids, lps)])]))
        return outs

    def load_weights(self, weights):
        assert self.calls[-1:] != ["sleep"], "weights pushed while asleep"
        weights = dict(weights)
        self.loads += 1
        self.calls.append("load")
        if not FakeLLM.stale:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            assert not unexpected and not [k for k in missing if k != "lm_head.weight"], (missing, unexpected)  # tied head

    def sleep(self, level):
        self.calls.append("sleep")

    def wake_up(self):
        self.calls.append("wake")


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.made, FakeLLM.stale = [], False
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: kw))
    return FakeLLM


def run(tmp_path: Path, out: str, steps: int = 3) -> list[dict]:
    policy = tmp_path / "policy"  # vLLM loads a folder: the tiny model saved as one
    if not policy.exists():
        load_causal_lm("tiny").save_pretrained(policy)
        load_tokenizer("tiny").save_pretrained(policy)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t} for t in PROMPTS])
    train_ppo(PPOConfig(policy=str(policy), reward="judge:length", prompts=str(prompts), output=str(tmp_path / out),
                        max_steps=steps, batch_size=4, num_minibatches=1, ppo_epochs=2, max_new_tokens=8, lr=5e-3,
                        value_model="head", missing_eos_penalty=None, save_every=0, report_to="none", threads=1,
                        generation="vllm"))
    return read_metrics(tmp_path / out / "metrics.jsonl")


def test_the_engine_samples_every_rollout_and_gets_the_policys_weights_after_every_update(tmp_path, fake_vllm):
    log = run(tmp_path, "ppo")
    engine = fake_vllm.made[-1]
    assert engine.kwargs["enable_sleep_mode"] is True and engine.kwargs["logprobs_mode"] == "processed_logprobs"
    assert engine.loads == 1 + 3  # the start policy's weights (LoRA merged), then one push per update
    assert engine.calls == ["load"] + ["sleep", "wake", "load"] * 3  # asleep while the models train, woken to take weights
    assert engine.temperatures == [0.7] * 3  # PPOConfig's default temperature, the one the policy's log-probs use
    assert all(r["logprob_mismatch"] < 1e-4 for r in log)  # every log-prob is the policy's own: the ratio starts at 1
    assert all(r["engine_logprob_gap"] < 1e-4 for r in log)  # the engine sampled with the policy's current weights
    assert log[-1]["approx_kl"] > 0  # the policy moved, so a stale engine would show (next test)
    trained = hf_weights(load_causal_lm(str(tmp_path / "ppo")))  # the saved LoRA policy, merged
    engine_weights = engine.model.state_dict()
    assert all(torch.allclose(engine_weights[k], v, atol=1e-6) for k, v in trained.items())


def test_an_engine_left_with_old_weights_shows_in_the_gap_not_in_the_ratio(tmp_path, fake_vllm):
    fake_vllm.stale = True
    log = run(tmp_path, "stale")
    assert log[0]["engine_logprob_gap"] < 1e-4  # before any update the weights are the same
    assert log[-1]["engine_logprob_gap"] > 1e-2  # measured ≈ 0.1–0.5 after two updates of lr 5e-3
    assert all(r["logprob_mismatch"] < 1e-4 for r in log)  # the policy recomputes what it trains on either way


def test_generation_vllm_without_vllm_is_one_clear_error(tmp_path, monkeypatch):
    from rlhfkit.config import ConfigError

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match="pip install vllm"):
        run(tmp_path, "none", steps=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and vLLM (run where they are)")
def test_a_real_vllm_engine_samples_ppos_rollouts_on_a_gpu(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install vllm")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t} for t in PROMPTS + PROMPTS[:2]])
    train_ppo(PPOConfig(policy="default", reward="judge:length", prompts=str(prompts), output=str(tmp_path / "ppo"),
                        max_steps=3, batch_size=8, num_minibatches=2, max_new_tokens=24, missing_eos_penalty=None,
                        save_every=0, report_to="none", generation="vllm", precision="fp32"))
    log = read_metrics(tmp_path / "ppo" / "metrics.jsonl")
    assert all(r["logprob_mismatch"] < 1e-3 for r in log)
    # vLLM's kernels against the policy's own pass after each weight push: measured where this ran (bench/RESULTS.md)
    assert all(r["engine_logprob_gap"] < 0.5 for r in log)
