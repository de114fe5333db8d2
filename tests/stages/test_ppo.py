import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhfkit.config import PPOConfig, SFTConfig
from rlhfkit.judges import register
from rlhfkit.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
from rlhfkit.models.rollout import Rollout, collect, response_mask_from_eos
from rlhfkit.rl.health import HealthMonitor
from rlhfkit.models.reward import JudgeReward
from rlhfkit.stages.ppo import PPOHealthError, compute_advantages, ppo_loss, rollout_metrics, train_ppo
from rlhfkit.stages.sft import train_sft
from rlhfkit.tracking import read_metrics
from tests.conftest import check_ctrl_c_during_evaluation, write_jsonl

DESIGN_KEYS = {"score", "kl", "beta", "non_score_reward", "entropy", "approx_kl", "clipfrac", "policy_loss", "value_loss",
               "explained_variance", "ratio_mean", "response_len", "no_eos_frac", "time_rollout_s", "time_train_s",
               "time_step_s", "ratio_max"}
TIMING = {"time_rollout_s", "time_train_s", "time_step_s", "samples_per_s", "peak_rss_gb", "rss_gb"}


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    texts = ["Hi", "Tell me a story about a dragon who learned to bake bread.", "Why is the sky blue?", "Name a colour.",
             "What should I cook tonight for four hungry friends?", "Count to three.", "Say yes.", "A haiku, please."]
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t} for t in texts])


def tiny_cfg(prompts, out, **kw) -> PPOConfig:
    base = dict(policy="tiny", reward="judge:length", prompts=str(prompts), output=str(out), max_steps=2, batch_size=4,
                num_minibatches=2, ppo_epochs=2, max_new_tokens=8, temperature=0.7, save_every=0, report_to="none",
                threads=1, missing_eos_penalty=None)
    base.update(kw)
    return PPOConfig(**base)


def test_ppo_logs_every_design_metric_and_starts_each_update_at_ratio_one(prompts_file, tmp_path):
    train_ppo(tiny_cfg(prompts_file, tmp_path / "run", report_to="tensorboard"))
    log = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    for rec in log:
        assert DESIGN_KEYS <= set(rec)
        # first minibatch of the first epoch, temperature 0.7, left-padded prompts of different lengths,
        # minibatch padding trimmed differently from the rollout's: the recomputed log-probs are the rollout's
        assert rec["logprob_mismatch"] < 1e-5
    assert list((tmp_path / "run" / "tb").iterdir())  # TensorBoard events
    assert (tmp_path / "run" / "adapter_config.json").exists()  # LoRA by default: the adapter is the output


def test_distinct_responses_counts_answers_against_prompts_so_agreeing_answers_to_one_prompt_are_no_collapse():
    from types import SimpleNamespace

    from rlhfkit.stages.ppo import distinct_responses

    query = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
    agree = SimpleNamespace(query=query, query_mask=mask, texts=["a", "a", "b", "b"])  # two prompts, each answered alike
    assert distinct_responses(agree) == 1.0
    collapsed = SimpleNamespace(query=query, query_mask=mask, texts=["a", "a", "a", "a"])  # both prompts answered alike
    assert distinct_responses(collapsed) == 0.5
    # seven prompts answered alike hide behind no variety in the eighth's answers
    hidden = SimpleNamespace(query=torch.tensor([[i] for i in range(7)] + [[7]] * 4), query_mask=torch.ones(11, 1),
                             texts=["x"] * 7 + ["a", "b", "c", "d"])
    assert distinct_responses(hidden) == 2 / 8
    # the same ids behind another padding are the same prompt; one answer per prompt counts as before
    padded = SimpleNamespace(query=torch.tensor([[0, 5, 6], [9, 5, 6]]), query_mask=torch.tensor([[0, 1, 1], [0, 1, 1]]),
                             texts=["a", "a"])
    assert distinct_responses(padded) == 1.0
    each = SimpleNamespace(query=torch.tensor([[1], [2], [3], [4]]), query_mask=torch.ones(4, 1), texts=list("aabc"))
    assert distinct_responses(each) == 0.75


def test_tokens_after_eos_carry_no_loss(prompts_file):
    torch.manual_seed(0)
    tok = load_tokenizer("tiny")
    policy = load_causal_lm("tiny")
    from rlhfkit.models.value import ValueHead

    head = ValueHead(policy.config.hidden_size)
    records = [{"prompt": "Hi"}, {"prompt": "Why is the sky blue?"}]
    ids = [[tok.bos_token_id, 100 + i, 200 + i] for i in range(2)]
    r, _ = collect(policy, tok, ids, records, JudgeReward("length"), max_new_tokens=8, temperature=0.7, value_head=head,
                    reference=policy)
    response = r.response.clone()
    response[:, 3] = tok.eos_token_id  # both responses end at token 3
    mask = response_mask_from_eos(response, tok.eos_token_id)
    cfg = tiny_cfg(prompts_file, "unused")

    def loss_and_grads(after_eos_token: int, garbage: float):
        resp = response.clone()
        resp[:, 4:] = after_eos_token
        junk = torch.full_like(r.logprobs, garbage) * (1 - mask)  # anything at all after EOS
        roll = Rollout(r.query, r.query_mask, resp, mask, r.logprobs * mask + junk, r.ref_logprobs, r.values + junk,
                       r.entropy, r.texts, torch.ones(2, dtype=torch.bool))
        adv = {"advantages": torch.ones_like(junk) * mask + junk, "returns": torch.ones_like(junk) * mask + 3 * junk}
        policy.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        loss, _, _ = ppo_loss(cfg, policy, None, head, roll, adv, torch.arange(2))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in list(policy.parameters()) + list(head.parameters()) if p.grad is not None])
        return loss.detach(), grads

    loss_a, grads_a = loss_and_grads(tok.eos_token_id, 0.0)
    loss_b, grads_b = loss_and_grads(1234, 57.0)
    assert loss_a == pytest.approx(float(loss_b), abs=1e-6)
    torch.testing.assert_close(grads_a, grads_b, atol=1e-6, rtol=1e-5)


class ShiftedReward:
    """A reward-model stand-in whose stored stats are mean 1, std 2."""

    def normalize(self, scores):
        return (scores - 1.0) / 2.0


def test_scores_are_normalised_with_the_stored_stats_and_a_missing_eos_gets_the_penalty(prompts_file):
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    zeros = torch.zeros(2, 4)
    r = Rollout(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), torch.zeros(2, 4, dtype=torch.long), mask,
                zeros, zeros, zeros, zeros, ["a", "b"], torch.tensor([True, False]))
    adv = compute_advantages(tiny_cfg(prompts_file, "unused", missing_eos_penalty=-1.0), r, torch.tensor([5.0, 5.0]),
                             ShiftedReward(), beta=0.05)
    assert adv["final"].tolist() == [2.0, -1.0]
    assert adv["rewards"][0].tolist() == [0.0, 0.0, 2.0, 0.0]  # the score sits on the last response token
    assert adv["advantages"][0, 3] == 0.0  # padding after EOS: no advantage


def test_kill_9_then_resume_continues_as_an_unbroken_run(prompts_file, tmp_path):
    kw = dict(max_steps=6, save_every=2, adaptive_kl=True, kl_target=0.05, kl_horizon=50, missing_eos_penalty=-1.0)
    train_ppo(tiny_cfg(prompts_file, tmp_path / "full", **kw))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlhfkit", "ppo", "--policy", "tiny", "--reward", "judge:length", "--prompts",
           str(prompts_file), "--output", str(run), "--max-steps", "6", "--batch-size", "4", "--max-new-tokens", "8",
           "--ppo-epochs", "2", "--num-minibatches", "2", "--report-to", "none", "--set", "save_every=2",
           "--set", "adaptive_kl=true", "--set", "kl_target=0.05", "--set", "kl_horizon=50", "--set", "threads=1",
           "--set", "temperature=0.7", "--set", "missing_eos_penalty=-1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": "src"})
    state = run / "checkpoint" / "trainer_state.json"
    try:
        while not state.exists() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # kill -9 right after the first checkpoint
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at < 6
    train_ppo(tiny_cfg(prompts_file, run, resume=True, **kw))
    full, resumed = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == list(range(1, 7))
    assert full[-1]["beta"] != 0.05  # the adaptive β moved, and came back from the checkpoint
    for a, b in zip(full[killed_at:], resumed[killed_at:]):
        for key in set(a) - TIMING:
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)


def test_non_finite_scores_stop_the_run_keeping_the_last_good_checkpoint(prompts_file, tmp_path):
    calls = {"n": 0}

    @register("nan-at-third-call")
    def nan_at_third(prompts, responses):
        calls["n"] += 1
        return [float("nan") if calls["n"] == 3 else 1.0 for _ in responses]

    with pytest.raises(PPOHealthError, match="last good checkpoint"):
        train_ppo(tiny_cfg(prompts_file, tmp_path / "run", reward="judge:nan-at-third-call", max_steps=5, save_every=1))
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["step"] == 3 and last["warnings"][0].startswith("non_finite")


def make_reward_model(folder: Path, spec: str = "tiny") -> Path:
    load_sequence_classifier(spec).save_pretrained(folder)
    load_tokenizer(spec).save_pretrained(folder)
    (folder / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0}))
    return folder


def test_value_model_defaults_to_a_copy_of_the_reward_model_and_resumes(prompts_file, tmp_path):
    rm = make_reward_model(tmp_path / "rm")
    cfg = tiny_cfg(prompts_file, tmp_path / "run", reward=str(rm), max_steps=2, save_every=1)
    train_ppo(cfg)
    assert (tmp_path / "run" / "value" / "config.json").exists()
    assert (tmp_path / "run" / "checkpoint" / "value" / "config.json").exists()
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # value init = the reward model's head with its normalisation folded in, so values are not a fresh head's
    assert first[0]["value_mean"] != 0.0 and DESIGN_KEYS <= set(first[-1])
    cfg.max_steps, cfg.resume = 3, True
    train_ppo(cfg)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_a_reward_model_with_another_tokenizer_scores_text_and_the_value_falls_back_to_a_head(prompts_file, tmp_path, capsys):
    rm = make_reward_model(tmp_path / "rm", "tiny-minilm")
    train_ppo(tiny_cfg(prompts_file, tmp_path / "run", reward=str(rm), max_steps=1))
    assert "using a value head on the policy" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "run" / "value").exists()
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["score"] != 0.0


WORDS = ["apple", "banana", "cherry", "dragon", "eagle", "falcon", "grape", "harbor"]


def rewarded_word_gain(tmp_path: Path, seed: int = 0, algo: str = "ppo") -> tuple[float, float]:
    """Bananas per answer over PPO's first and last 10 of 30 updates, for a tiny policy that names one of 8 words.

    SFT teaches each of four prompts all eight answers ("The word is <w>."), so the policy starts as a mixture
    that says "banana" about one time in eight on every prompt: each update of 16 answers (4 prompts × 4,
    leave-one-out baseline) sees the rewarded answer about twice. Full fine-tuning of the tiny model moves the
    head's "banana" logit directly; LoRA on it learned slowly enough that the pace varied with the seed and the
    CPU matmul route (a memorised one-word-per-prompt start, as before, left the reward to exploration luck).
    """
    @register("banana-count")
    def banana(prompts, responses):
        return [float(r.lower().count("banana")) for r in responses]

    prompts = [f"Name a word, please ({i})." for i in range(4)]
    data = write_jsonl(tmp_path / "words.jsonl", [{"prompt": p, "completion": f"The word is {w}."} for p in prompts for w in WORDS])
    prompt_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    train_sft(SFTConfig(model="tiny", data=str(data), output=str(tmp_path / "sft"), max_steps=60, batch_size=8, lr=5e-3,
                        warmup_steps=2, eval_fraction=0.0, save_every=0, report_to="none", threads=1, seed=seed))
    train_ppo(PPOConfig(algo=algo, policy=str(tmp_path / "sft"), reward="judge:banana-count", prompts=str(prompt_file),
                        output=str(tmp_path / "ppo"), max_steps=30, batch_size=16, samples_per_prompt=4, num_minibatches=2,
                        max_new_tokens=8, lora=False, lr=1e-3, kl_coef=0.01, temperature=1.0, missing_eos_penalty=None, save_every=0,
                        report_to="none", threads=1, seed=seed))
    scores = [r["score"] for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl")]
    return sum(scores[:10]) / 10, sum(scores[-10:]) / 10


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo", "reinforce++"])
def test_ppo_makes_a_tiny_policy_say_the_rewarded_word_more_often(tmp_path, algo):
    first, last = rewarded_word_gain(tmp_path, algo=algo)
    # two more bananas in every answer; seeds 0-9 under both CPU matmul routes clear it with room to spare
    # (bench/learning_margins.py; figures in bench/RESULTS.md)
    assert last >= first + 2.0, (first, last)


def test_several_answers_per_prompt_sit_side_by_side_and_a_per_prompt_offset_is_no_reward(prompts_file, tmp_path, monkeypatch):
    import rlhfkit.stages.ppo as trainer

    @register("prompt-length")
    def prompt_length(prompts, responses):  # the same for every answer to a prompt: nothing to learn
        return [float(len(p["prompt"])) for p in prompts]

    batches = []

    def spy(policy, tok, prompts, records, *args, **kwargs):
        batches.append([r["prompt"] for r in records])
        return collect(policy, tok, prompts, records, *args, **kwargs)

    monkeypatch.setattr(trainer, "collect", spy)
    train_ppo(tiny_cfg(prompts_file, tmp_path / "run", reward="judge:prompt-length", samples_per_prompt=2))
    assert all(b[0::2] == b[1::2] and len(set(b)) == 2 for b in batches)  # 4 rows: 2 prompts × 2 answers
    log = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert log[0]["score"] > 1 and log[0]["reward"] == 0.0  # raw scores differ by prompt; what PPO sees is 0
    with pytest.raises(Exception, match="samples_per_prompt"):
        train_ppo(tiny_cfg(prompts_file, tmp_path / "bad", samples_per_prompt=3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_a_gpu_every_pass_runs_there_and_the_policy_learns(memorise_file, tmp_path, monkeypatch, precision):
    import rlhfkit.stages.ppo as trainer

    @register("banana-count")
    def banana(prompts, responses):
        return [float(r.lower().count("banana")) for r in responses]

    devices = set()

    def spy(policy, *args, **kwargs):
        rollout, scores = collect(policy, *args, **kwargs)
        devices.update(t.device.type for t in (rollout.query, rollout.logprobs, rollout.ref_logprobs, rollout.values))
        devices.add(next(p for p in policy.parameters() if p.requires_grad).device.type)
        return rollout, scores

    monkeypatch.setattr(trainer, "collect", spy)
    train_sft(SFTConfig(model="tiny", data=str(memorise_file), output=str(tmp_path / "sft"), max_steps=100, batch_size=4,
                        lr=5e-3, warmup_steps=2, eval_fraction=0.0, save_every=0, report_to="none"))
    train_ppo(PPOConfig(policy=str(tmp_path / "sft"), reward="judge:banana-count", prompts=str(memorise_file),
                        output=str(tmp_path / "ppo"), max_steps=30, batch_size=8, num_minibatches=2, max_new_tokens=12,
                        lr=3e-3, kl_coef=0.01, temperature=1.0, missing_eos_penalty=None, save_every=10,
                        report_to="none", precision=precision))
    assert devices == {"cuda"}
    log = read_metrics(tmp_path / "ppo" / "metrics.jsonl")
    assert all(r["logprob_mismatch"] < 1e-3 for r in log)  # the ratio starts at 1 on the GPU's kernels too
    scores = [r["score"] for r in log]
    assert sum(scores[-5:]) / 5 >= sum(scores[:5]) / 5 + 0.4, scores
    assert (tmp_path / "ppo" / "adapter_config.json").exists()


def test_bf16_takes_rollout_logprobs_from_the_training_pass_so_the_ratio_starts_at_one(prompts_file, tmp_path):
    train_ppo(tiny_cfg(prompts_file, tmp_path / "run", precision="bf16"))
    log = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert yaml_precision(tmp_path / "run") == "bf16"
    for rec in log:
        assert rec["logprob_mismatch"] < 1e-6  # recomputed under the same autocast as training: identical
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the reference (adapters off) exactly


def yaml_precision(run: Path) -> str:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["precision"]


def test_auto_precision_picks_bf16_only_where_it_measured_faster(monkeypatch):
    from rlhfkit.accel import precision

    monkeypatch.setattr(precision, "cpu_bf16_pays", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_pays", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("fp8", "cpu")


def test_bf16_lora_keeps_the_frozen_base_in_bf16_and_the_adapters_in_fp32(prompts_file, tmp_path):
    from rlhfkit.stages.ppo import build_policy

    policy, reference = build_policy(tiny_cfg(prompts_file, tmp_path / "run", precision="bf16"), None)
    assert reference is None  # the reference is the same bf16 base with the adapters off
    dtypes = {p.dtype for p in policy.parameters() if p.requires_grad}
    assert dtypes == {torch.float32} and any(p.requires_grad for p in policy.parameters())
    assert {p.dtype for p in policy.parameters() if not p.requires_grad} == {torch.bfloat16}
    train_ppo(tiny_cfg(prompts_file, tmp_path / "run", precision="bf16", max_steps=3))
    log = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(log) == 3
    # bf16 matmuls round by the shape they run at (the rollout's batch vs a minibatch): the ratio starts at 1
    # up to ~1e-3 in log-prob, far inside the 0.2 clip range; exactly 1 while the adapters are still zero
    assert log[0]["logprob_mismatch"] < 1e-6 and all(rec["logprob_mismatch"] < 0.02 for rec in log)
    from safetensors.torch import load_file

    lora_b = [t for k, t in load_file(tmp_path / "run" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().max()) > 0 for t in lora_b)  # the adapters (zero at the start) trained
    adapted = load_causal_lm(str(tmp_path / "run"))  # the saved adapter loads onto the fp32 base
    assert {p.dtype for p in adapted.parameters()} == {torch.float32}


def test_a_time_budget_stops_before_an_update_that_would_not_fit_and_saves_the_policy(prompts_file, tmp_path):
    train_ppo(tiny_cfg(prompts_file, tmp_path / "run", max_steps=5, time_budget_minutes=0.0001))
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 1  # one update always runs
    assert (tmp_path / "run" / "adapter_config.json").exists()


def held_out_kw(prompts, gold: str, **kw) -> dict:
    """A held-out evaluation after every update, on the training prompts (held out or not, the mechanics are the same);
    a large LoRA step, so the tiny policy's answers (and so the scores) move from one snapshot to the next."""
    return {"max_steps": 4, "eval_every": 1, "eval_prompts": str(prompts), "eval_judge": gold, "lr": 1e-2, **kw}


def test_every_held_out_evaluation_is_a_numbered_snapshot_and_the_proxy_alone_chooses(prompts_file, tmp_path):
    from rlhfkit.accel import speed_up
    from rlhfkit.data.formats import read_records
    from rlhfkit.stages.ppo import encode_prompts, evaluate

    @register("minus-length")
    def minus_length(prompts, responses):  # a gold judge that disagrees with the proxy (judge:length) on every pair
        return [-float(len(r.split())) for r in responses]

    run = tmp_path / "run"
    cfg = tiny_cfg(prompts_file, run, **held_out_kw(prompts_file, "minus-length"))
    train_ppo(cfg)
    snaps = json.loads((run / "snapshots.json").read_text())
    rows = snaps["snapshots"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["path"] is None  # step 0 is the start policy, which is the reference: no weights kept
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert [r["path"] for r in rows[1:]] == [f"snapshots/step-{s:04d}" for s in range(1, 5)]
    rm, gold = [r["rm_score"] for r in rows], [r["gold_score"] for r in rows]
    assert len(set(rm)) > 1  # the policy moved: there is a choice to make
    assert snaps["chosen"] == rows[rm.index(max(rm))]["step"]  # the highest held-out proxy ...
    assert snaps["chosen"] != rows[gold.index(max(gold))]["step"]  # ... whatever the gold judge says
    assert any(r["kl"] > 0.01 for r in rows[1:])
    # the same numbers are in the log under eval's names, at the same steps
    log = {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}
    for row in rows:
        logged = [log[row["step"]][f"eval/{k}"] for k in ("rm_score", "gold_score", "gold_se", "kl")]
        assert logged == [row["rm_score"], row["gold_score"], row["gold_se"], row["kl"]]
        assert row["gold_se"] > 0  # 8 held-out answers of different lengths: the gold mean has a standard error
        assert "eval/grading_accuracy" not in log[row["step"]] and row["grading_accuracy"] is None  # no grading prompts
    # each snapshot loads on its own (an adapter on the base it names) and is the policy that was evaluated
    records = read_records(prompts_file, "prompt")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where training ran
    for row in rows[1:]:
        model, tok = load_causal_lm(str(run / row["path"])).to(device), load_tokenizer(str(run / row["path"]))
        if device.type == "cpu":
            speed_up(model, device=torch.device("cpu"), head_apart=True)  # the matmul route training ran on
        held = evaluate(cfg, model, None, tok, encode_prompts(cfg, tok, records), records, JudgeReward("length"), None)
        assert held["eval/rm_score"] == row["rm_score"] and held["eval/kl"] == pytest.approx(row["kl"], abs=1e-4)


def test_resume_drops_the_snapshots_after_the_checkpoint_and_ends_as_an_unbroken_run(prompts_file, tmp_path):
    from rlhfkit.stages.ppo import snapshot_rows

    calls = {"n": 0, "stop_at": None}

    @register("stops-at-an-evaluation")
    def gold(prompts, responses):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return [float(len(r)) for r in responses]

    kw = held_out_kw(prompts_file, "stops-at-an-evaluation", save_every=2)
    train_ppo(tiny_cfg(prompts_file, tmp_path / "full", **kw))
    run = tmp_path / "cut"
    calls.update(n=0, stop_at=5)  # Ctrl-C in step 4's evaluation: snapshots 0-3 are written, the checkpoint is at step 2
    with pytest.raises(KeyboardInterrupt):
        train_ppo(tiny_cfg(prompts_file, run, **kw))
    assert [r["step"] for r in snapshot_rows(run)] == [0, 1, 2, 3] and (run / "snapshots" / "step-0003").exists()
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    calls["stop_at"] = None
    train_ppo(tiny_cfg(prompts_file, run, resume=True, **kw))
    full, resumed = (json.loads((r / "snapshots.json").read_text()) for r in (tmp_path / "full", run))
    assert [r["step"] for r in resumed["snapshots"]] == [0, 1, 2, 3, 4]  # step 3 once: the row after the checkpoint went
    for a, b in zip(full["snapshots"], resumed["snapshots"]):
        assert (b["path"], b["rm_score"], b["gold_score"]) == (a["path"], a["rm_score"], a["gold_score"])
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-4)
    assert resumed["chosen"] == full["chosen"]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [f"step-{s:04d}" for s in range(1, 5)]  # nothing half-written


def test_full_fine_tuning_keeps_no_snapshot_weights_unless_asked_but_still_records_every_evaluation(prompts_file, tmp_path):
    kw = held_out_kw(prompts_file, "length", lora=False, lr=1e-3, max_steps=2)
    train_ppo(tiny_cfg(prompts_file, tmp_path / "off", **kw))
    rows = json.loads((tmp_path / "off" / "snapshots.json").read_text())["snapshots"]
    assert [(r["step"], r["path"]) for r in rows] == [(0, None), (1, None), (2, None)]
    assert not (tmp_path / "off" / "snapshots").exists()
    train_ppo(tiny_cfg(prompts_file, tmp_path / "on", keep_snapshots=True, **kw))
    rows = json.loads((tmp_path / "on" / "snapshots.json").read_text())["snapshots"]
    assert [r["path"] for r in rows] == [None, "snapshots/step-0001", "snapshots/step-0002"]
    assert (tmp_path / "on" / "snapshots" / "step-0002" / "model.safetensors").exists()  # the full weights


def test_a_first_update_where_every_answer_misses_eos_runs_on(prompts_file):
    # Every answer missed EOS, so every score is the −1 penalty and leave-one-out makes each reward 0; with KL 0
    # at step 1 and a zero value head every return is 0: the explained variance is undefined, no reason to stop.
    mask = torch.ones(4, 3, dtype=torch.long)
    zeros = torch.zeros(4, 3)
    r = Rollout(torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1), torch.zeros(4, 3, dtype=torch.long), mask,
                zeros, zeros, zeros, zeros, ["a", "b", "c", "d"], torch.tensor([False] * 4))
    cfg = tiny_cfg(prompts_file, "unused", missing_eos_penalty=-1.0, samples_per_prompt=2)
    adv = compute_advantages(cfg, r, torch.tensor([5.0, 1.0, 2.0, 3.0]), ShiftedReward(), beta=0.05)
    assert adv["final"].tolist() == [0.0] * 4 and not adv["returns"].any()
    metrics = rollout_metrics(r, torch.tensor([5.0, 1.0, 2.0, 3.0]), adv, 0.05)
    assert metrics["explained_variance"] is None
    warnings, fatal = HealthMonitor(3).check(1, metrics)
    assert not fatal, warnings


def test_ctrl_c_during_a_held_out_evaluation_saves_the_update_just_taken_and_resume_repeats_nothing(prompts_file, tmp_path, monkeypatch, python_ctrl_c):
    import rlhfkit.stages.ppo as ppo

    kw = held_out_kw(prompts_file, "length", eval_every=2, max_steps=4)  # evaluations at steps 0, 2, 4: the second in update 2
    check_ctrl_c_during_evaluation(monkeypatch, tmp_path, train_ppo, lambda out, **more: tiny_cfg(prompts_file, out, **kw, **more),
                                   ppo, "evaluate", saved_step=2, weights="adapter_model.safetensors", tolerance=1e-5)


# ------------------------------------------------------------------------------ critic-free algorithms (--algo)


class SameReward:
    def normalize(self, scores):
        return scores


def two_prompts_two_answers() -> Rollout:
    """Rows 0-1 answer one prompt, rows 2-3 another; row 3 ends after two tokens; log π − log π_ref = 0.1 per token."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
    logp = torch.full((4, 3), -1.0) * mask
    return Rollout(torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1), torch.zeros(4, 3, dtype=torch.long), mask, logp,
                   (logp - 0.1) * mask, torch.zeros(4, 3), torch.zeros(4, 3), ["a", "b", "c", "d"], torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("algo, expected", [
    # grpo: centred within each prompt's pair and divided by the pair's std (√2 for a gap of 2, √0.5 for a gap of 1)
    ("grpo", [[1 / 2 ** 0.5] * 3, [-1 / 2 ** 0.5] * 3, [-0.5 / 0.5 ** 0.5] * 3, [0.5 / 0.5 ** 0.5] * 2 + [0.0]]),
    # rloo: score − β·(summed KL: 0.3, or 0.2 for row 3), less the other answer's
    ("rloo", [[2.0] * 3, [-2.0] * 3, [-1.01] * 3, [1.01] * 2 + [0.0]]),
    # reinforce++: leave-one-out scores (±2, ∓1) on the last token, −β·0.1 on each, summed to go
    ("reinforce++", [[1.97, 1.98, 1.99], [-2.03, -2.02, -2.01], [-1.03, -1.02, -1.01], [0.98, 0.99, 0.0]]),
])
def test_each_critic_free_advantage_on_a_hand_made_rollout(algo, expected, prompts_file):
    cfg = tiny_cfg(prompts_file, "unused", algo=algo, samples_per_prompt=2, whiten_advantages=False, missing_eos_penalty=None)
    adv = compute_advantages(cfg, two_prompts_two_answers(), torch.tensor([3.0, 1.0, 0.0, 1.0]), SameReward(), beta=0.1)
    assert adv["advantages"].tolist() == [pytest.approx(row, abs=1e-3) for row in expected]
    assert adv["returns"].abs().sum() == 0 or algo == "reinforce++"  # no critic to fit


def test_reinforce_pp_normalises_its_advantages_over_the_whole_batch(prompts_file):
    """REINFORCE++'s global normalisation by hand: the 11 real tokens' returns to go (the table above) have mean
    −1.21 / 11 = −0.11 and, Bessel-corrected, variance 28.9316 / 10; every token becomes (x + 0.11) / √2.89316 and
    the padded token stays 0. Nothing is normalised per prompt: rows 2-3's advantages keep their offset."""
    cfg = tiny_cfg(prompts_file, "unused", algo="reinforce++", samples_per_prompt=2, whiten_advantages=True,
                   missing_eos_penalty=None)
    adv = compute_advantages(cfg, two_prompts_two_answers(), torch.tensor([3.0, 1.0, 0.0, 1.0]), SameReward(), beta=0.1)
    returns = [[1.97, 1.98, 1.99], [-2.03, -2.02, -2.01], [-1.03, -1.02, -1.01], [0.98, 0.99, None]]
    std = 2.89316 ** 0.5
    expected = [[0.0 if x is None else (x + 0.11) / std for x in row] for row in returns]
    assert adv["advantages"].tolist() == [pytest.approx(row, abs=1e-4) for row in expected]
    real = adv["advantages"][two_prompts_two_answers().response_mask.bool()]
    assert float(real.mean()) == pytest.approx(0.0, abs=1e-6) and float(real.std()) == pytest.approx(1.0, abs=1e-5)


def test_grpo_adds_beta_times_the_k3_kl_to_the_loss_and_others_do_not(prompts_file):
    torch.manual_seed(0)
    tok, policy = load_tokenizer("tiny"), load_causal_lm("tiny")
    ids = [[tok.bos_token_id, 100 + i, 200 + i] for i in range(4)]
    r, _ = collect(policy, tok, ids, [{"prompt": "Hi"}] * 4, JudgeReward("length"), max_new_tokens=6, temperature=0.7,
                   reference=policy)
    ref = r.ref_logprobs - 0.2 * r.response_mask  # a reference 0.2 nats less likely per token: a KL to pay
    r = Rollout(r.query, r.query_mask, r.response, r.response_mask, r.logprobs, ref, r.values, r.entropy, r.texts, r.has_eos)
    losses = {}
    for algo, beta in (("grpo", 0.0), ("grpo", 0.5), ("rloo", 0.5)):
        cfg = tiny_cfg(prompts_file, "unused", algo=algo, samples_per_prompt=2)
        adv = {**compute_advantages(cfg, r, torch.tensor([1.0, 2.0, 3.0, 5.0]), SameReward(), beta), "beta": beta}
        with torch.no_grad():
            losses[algo, beta], stats, _ = ppo_loss(cfg, policy, None, None, r, adv, torch.arange(4))
    k3 = math.expm1(-0.2) + 0.2  # per token: the policy's log-probs are the rollout's, log r = 0.2
    assert float(stats.get("kl_loss", 0.0)) == 0.0
    assert float(losses["grpo", 0.5] - losses["grpo", 0.0]) == pytest.approx(0.5 * k3, abs=1e-5)


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce++"])
def test_a_critic_free_run_has_no_value_model_and_logs_what_ppo_logs(algo, prompts_file, tmp_path):
    out = tmp_path / algo
    train_ppo(tiny_cfg(prompts_file, out, algo=algo, samples_per_prompt=2, value_model="reward"))
    log = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    assert DESIGN_KEYS - {"explained_variance"} <= set(log[-1]) and all(r["value_loss"] == 0.0 for r in log)
    assert all(r["logprob_mismatch"] < 1e-5 for r in log)
    assert not (out / "value").exists()
    assert ("kl_loss" in log[-1]) == (algo == "grpo")


@pytest.mark.parametrize("algo, setting, eps", [("ppo", None, 1e-5), ("grpo", None, 1e-8), ("rloo", None, 1e-8),
                                                  ("reinforce++", None, 1e-8), ("rloo", 1e-5, 1e-5), ("ppo", 1e-8, 1e-8)])
def test_adam_eps_is_1e5_for_ppo_and_1e8_for_the_critic_free_unless_set(algo, setting, eps, prompts_file, tmp_path):
    from rlhfkit.stages.ppo import build_optimiser

    optimizer, _, _ = build_optimiser(tiny_cfg(prompts_file, tmp_path, algo=algo, adam_eps=setting), 1e-3,
                                      torch.nn.Linear(2, 2), None)
    assert optimizer.defaults["eps"] == eps


def test_grpo_and_rloo_refuse_one_answer_per_prompt(prompts_file, tmp_path):
    from rlhfkit.config import ConfigError

    with pytest.raises(ConfigError, match="samples_per_prompt: grpo compares each answer"):
        train_ppo(tiny_cfg(prompts_file, tmp_path / "one", algo="grpo", samples_per_prompt=1))


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce++"])
def test_ctrl_c_then_resume_of_a_critic_free_run_continues_as_an_unbroken_one(algo, prompts_file, tmp_path, monkeypatch,
                                                                              python_ctrl_c):
    import rlhfkit.stages.ppo as ppo

    kw = held_out_kw(prompts_file, "length", eval_every=2, max_steps=4, algo=algo, samples_per_prompt=2)
    check_ctrl_c_during_evaluation(monkeypatch, tmp_path, train_ppo, lambda out, **more: tiny_cfg(prompts_file, out, **kw, **more),
                                   ppo, "evaluate", saved_step=2, weights="adapter_model.safetensors", tolerance=1e-5)
