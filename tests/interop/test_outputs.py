"""What rlhfkit writes loads in plain transformers/peft, from another working directory, with the same numbers.

Each check runs the loading side in a fresh Python process whose working directory is elsewhere, so a
relative base path or a spec only rlhfkit resolves (``default``, ``tiny``) would fail there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.config import PPOConfig, SFTConfig
from rlhfkit.models.loading import load_causal_lm, load_tokenizer

IDS = [[1, 17, 230, 5, 99, 42, 7, 3]]


def plain_logits(kind: str, folder: Path, where: Path) -> list:
    """Logits of IDS from ``folder`` loaded by plain peft (kind "peft") or transformers ("hf"), run from ``where``."""
    code = f"""
import json, torch
ids = torch.tensor({IDS})
if {kind!r} == "peft":
    from peft import AutoPeftModelForCausalLM
    model = AutoPeftModelForCausalLM.from_pretrained({str(folder)!r})
else:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
model.eval()
with torch.no_grad():
    print(json.dumps(model(input_ids=ids).logits[0, -3:].tolist()))
"""
    where.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=where, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours(spec: Path) -> torch.Tensor:
    model = load_causal_lm(str(spec))
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits[0, -3:]


@pytest.fixture
def base(tmp_path, monkeypatch) -> str:
    """The tiny model saved as a folder, named by a RELATIVE path from the run's working directory."""
    monkeypatch.chdir(tmp_path)
    model, tok = load_causal_lm("tiny"), load_tokenizer("tiny")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    return "base"


def sft_data(path: Path) -> str:
    rows = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_an_sft_adapter_and_its_merged_model_load_in_plain_peft_and_transformers_from_elsewhere(base, tmp_path):
    from rlhfkit.stages.sft import train_sft

    train_sft(SFTConfig(model=base, data=sft_data(tmp_path / "sft.jsonl"), output="sft", lora=True, merge_lora=True,
                        max_steps=3, batch_size=4, lr=1e-2, eval_fraction=0.0, report_to="none", threads=1))
    adapter = json.loads((tmp_path / "sft" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((tmp_path / "base").resolve())  # absolute, not "base"
    expected = ours(tmp_path / "sft")
    elsewhere = tmp_path / "elsewhere"
    assert torch.allclose(torch.tensor(plain_logits("peft", (tmp_path / "sft").resolve(), elsewhere)), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(plain_logits("hf", (tmp_path / "sft" / "merged").resolve(), elsewhere)), expected,
                          atol=1e-5)
    assert not torch.allclose(expected, ours(tmp_path / "base"), atol=1e-3)  # SFT changed the model: the check can fail


def test_a_dpo_adapter_and_its_merged_model_load_in_plain_peft_and_transformers_from_elsewhere(base, tmp_path):
    from rlhfkit.config import DPOConfig
    from rlhfkit.stages.dpo import train_dpo

    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"It is {i + 1}.", "rejected": "No idea."} for i in range(8)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_dpo(DPOConfig(model=base, data="pairs.jsonl", output="dpo", lora=True, merge_lora=True, max_steps=2,
                        batch_size=4, lr=1e-2, eval_fraction=0.0, eval_every=0, save_every=0, report_to="none", threads=1))
    assert json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str((tmp_path / "base").resolve())
    expected = ours(tmp_path / "dpo")
    elsewhere = tmp_path / "elsewhere"
    assert torch.allclose(torch.tensor(plain_logits("peft", (tmp_path / "dpo").resolve(), elsewhere)), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(plain_logits("hf", (tmp_path / "dpo" / "merged").resolve(), elsewhere)), expected,
                          atol=1e-5)


@pytest.mark.slow
def test_ppo_merges_on_request_and_its_adapter_and_value_folder_load_outside_rlhfkit(base, tmp_path):
    from transformers import AutoTokenizer

    from rlhfkit.stages.ppo import train_ppo

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n" for w in ("cats", "dogs", "rain", "sun")))
    # a separate value model (the policy's own architecture), so that out/value is written
    train_ppo(PPOConfig(policy=base, reward="judge:length", prompts=str(prompts), output="ppo", lora=True, merge_lora=True,
                        value_model=base, max_steps=1, batch_size=4, num_minibatches=1, ppo_epochs=1, max_new_tokens=6,
                        lr=1e-2, report_to="none", save_every=0, threads=1))
    out = tmp_path / "ppo"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    expected = ours(out)
    elsewhere = tmp_path / "elsewhere"
    assert torch.allclose(torch.tensor(plain_logits("peft", out.resolve(), elsewhere)), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(plain_logits("hf", (out / "merged").resolve(), elsewhere)), expected, atol=1e-5)
    value_tok = AutoTokenizer.from_pretrained(out / "value")
    assert value_tok.get_vocab() == load_tokenizer(base).get_vocab()


# an encoder with its default [CLS] pooling (the README's code is the plain forward), with opt-in mean pooling, a causal LM
@pytest.mark.parametrize("backbone,pooling", [("tiny-minilm", "cls"), ("tiny-minilm", "mean"), ("tiny", "cls")])
def test_a_reward_models_readme_code_scores_in_plain_transformers_as_rlhf_rm_score_does(backbone, pooling, tmp_path, monkeypatch):
    from rlhfkit.config import RewardConfig
    from rlhfkit.models.reward import RewardScorer
    from rlhfkit.stages.reward_model import train_reward

    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "I do not know."} for i in range(6)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_reward(RewardConfig(model=backbone, data="pairs.jsonl", output="rm", max_steps=3, batch_size=4, lr=1e-3,
                              eval_fraction=0.0, eval_every=0, save_every=0, max_len=24, report_to="none", threads=1,
                              pooling=pooling))
    readme = (tmp_path / "rm" / "README.md").read_text()
    if backbone == "tiny-minilm":  # the default needs nothing beyond AutoModelForSequenceClassification's own forward
        assert ("model(**enc).logits" in readme) == (pooling == "cls")
    code = readme.split("```python\n", 1)[1].split("```", 1)[0].replace("path/to/this/folder", str((tmp_path / "rm").resolve()))
    # a long prompt too: the truncation rule is part of the layout
    cases = [("What is 2 plus 2?", "It is 4."), ("What is 3 plus 3?", "No idea."), ("word " * 40, "A long prompt.")]
    probe = code + f"\nimport json\nprint(json.dumps([score([{{'role': 'user', 'content': p}}], r) for p, r in {cases!r}]))\n"
    (tmp_path / "elsewhere").mkdir()
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path / "elsewhere", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    plain = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    scores = RewardScorer.load(tmp_path / "rm").score([{"prompt": p} for p, _ in cases], [r for _, r in cases])
    assert torch.allclose(plain, scores, atol=1e-5), (plain, scores)
    assert scores.std() > 0  # distinct inputs score differently: the comparison can fail
