"""The same seed gives the same numbers as the code gave when these were recorded.

Moving code between files must not change what it computes. The tiny SFT and reward-model losses and the
tiny ``judge:length`` PPO curve were recorded before the package was re-laid out
(``RECORD_CURVES=1 pytest tests/test_recorded_curves.py`` records them again, after a deliberate change of
behaviour).
"""

import json
import os
from pathlib import Path

import pytest

from rlhfkit.config import PPOConfig, RewardConfig, SFTConfig
from rlhfkit.stages.ppo import train_ppo
from rlhfkit.stages.reward_model import train_reward
from rlhfkit.stages.sft import train_sft
from rlhfkit.tracking import read_metrics
from tests.conftest import write_jsonl
from tests.stages.test_reward_model import token_preference_data

RECORDED = Path(__file__).parent / "recorded_curves.json"
PPO_KEYS = ["score", "kl", "policy_loss", "value_loss", "entropy", "approx_kl"]
KL_ABS = 1e-5
WORDS = ["apple", "banana", "cherry", "dragon", "eagle", "falcon", "grape", "harbor"]


def curves(tmp: Path) -> dict:
    mem = write_jsonl(tmp / "mem.jsonl", [{"prompt": f"Say the secret word number {i}.",
                                           "completion": f"The secret word number {i} is {w}."} for i, w in enumerate(WORDS)])
    train_sft(SFTConfig(model="tiny", data=str(mem), output=str(tmp / "sft"), max_steps=12, batch_size=4, lr=5e-3,
                        warmup_steps=2, eval_fraction=0.0, save_every=0, report_to="none", threads=1, seed=3))
    sft = [r["loss"] for r in read_metrics(tmp / "sft" / "metrics.jsonl")]
    train_reward(RewardConfig(model="tiny-minilm", data=str(token_preference_data(tmp, n_prompts=40)), output=str(tmp / "rm"),
                              max_steps=12, batch_size=8, lr=2e-3, warmup_steps=3, eval_fraction=0.25, eval_every=6,
                              save_every=0, report_to="none", threads=1, max_len=32, seed=3))
    rm = [r["loss"] for r in read_metrics(tmp / "rm" / "metrics.jsonl") if "loss" in r]
    texts = ["Hi", "Tell me a story about a dragon.", "Why is the sky blue?", "Name a colour.", "Count to three.", "Say yes."]
    prompts = write_jsonl(tmp / "prompts.jsonl", [{"prompt": t} for t in texts])
    train_ppo(PPOConfig(policy="tiny", reward="judge:length", prompts=str(prompts), output=str(tmp / "ppo"), max_steps=3,
                        batch_size=4, num_minibatches=2, ppo_epochs=2, max_new_tokens=8, temperature=0.7, save_every=0,
                        report_to="none", threads=1, missing_eos_penalty=None, seed=3))
    ppo = {k: [r[k] for r in read_metrics(tmp / "ppo" / "metrics.jsonl")] for k in PPO_KEYS}
    return {"sft_loss": sft, "rm_loss": rm, **{f"ppo_{k}": v for k, v in ppo.items()}}


def test_tiny_sft_reward_model_and_ppo_curves_match_the_recorded_ones(tmp_path):
    now = curves(tmp_path)
    if os.environ.get("RECORD_CURVES") == "1":
        RECORDED.write_text(json.dumps(now, indent=1) + "\n")
    recorded = json.loads(RECORDED.read_text())
    assert set(now) == set(recorded)
    for name, values in recorded.items():
        assert len(now[name]) == len(values), name
        # The KL is a difference of two nearly equal log-prob sums: at the start it is rounding alone, and rounding
        # differs by CPU kind (AVX2 against AVX-512 kernels: 1e-6 apart here), so it is compared to 1e-5.
        assert now[name] == pytest.approx(values, rel=1e-4, abs=KL_ABS if name == "ppo_kl" else 1e-6), name
