"""``RLHFKIT_ACCEL=0`` turns every CPU speed path off: what is left is a plain PyTorch program that trains alike."""

import pytest
import torch

from rlhfkit.accel import cpu_linear, speed_up
from rlhfkit.accel.attention import short_sequence_attention
from rlhfkit.accel.head import fp32_logits, plain_linear
from rlhfkit.accel.precision import resolve_precision
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.stages.ppo import train_ppo
from rlhfkit.tracking import read_metrics
from tests.conftest import write_jsonl
from tests.stages.test_ppo import tiny_cfg

TEXTS = ["Hi", "Tell me a story about a dragon.", "Why is the sky blue?", "Name a colour.", "Count to three.", "Say yes."]


def test_with_the_speed_paths_off_nothing_is_switched_and_every_product_takes_the_plain_route(monkeypatch):
    monkeypatch.setenv("RLHFKIT_ACCEL", "0")
    model = load_causal_lm("tiny")
    speed_up(model, device=torch.device("cpu"))
    assert not any(isinstance(m, cpu_linear.OneDNNLinear) for m in model.modules())
    assert not plain_linear(model.lm_head)  # the head goes through its module: no fused log-probs
    assert type(short_sequence_attention(torch.zeros(1, 8, dtype=torch.long))).__name__ == "nullcontext"
    assert resolve_precision("auto", "cpu") == "fp32"
    hidden = torch.randn(3, model.config.hidden_size)
    assert torch.equal(fp32_logits(model.lm_head)(hidden), torch.nn.functional.linear(hidden, model.lm_head.weight))


def test_ppo_with_the_speed_paths_off_trains_as_it_does_with_them_on(tmp_path, monkeypatch):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t} for t in TEXTS])
    train_ppo(tiny_cfg(prompts, tmp_path / "on", max_steps=3))
    monkeypatch.setenv("RLHFKIT_ACCEL", "0")
    train_ppo(tiny_cfg(prompts, tmp_path / "off", max_steps=3))
    on, off = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("on", "off"))
    assert [r["step"] for r in off] == [1, 2, 3]
    assert all(b["logprob_mismatch"] < 1e-5 for b in off)  # rollout and training log-probs agree on the plain route too
    # the first update starts from the same weights: the same arithmetic summed in another order gives the same
    # samples and the same losses to float precision (later updates may differ by a sampled token on another CPU)
    a, b = on[0], off[0]
    assert b["score"] == a["score"] and b["response_len"] == a["response_len"]
    for key in ("kl", "policy_loss", "value_loss", "entropy"):
        assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
