import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit import distributed as dist
from rlhfkit.config import ConfigError, SFTConfig
from rlhfkit.data.formats import read_records
from rlhfkit.stages.sft import train_sft
from rlhfkit.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sft_args(data: Path, out: Path, max_steps: int, model: str = "tiny") -> list[str]:
    # A constant schedule, so a run stopped at step 4 and resumed to 8 sees the lr of an unbroken 8-step run.
    return ["--model", model, "--data", str(data), "--output", str(out), "--max-steps", str(max_steps),
            "--batch-size", "8", "--lr", "5e-3", "--report-to", "none", "--set", "eval_fraction=0",
            "--set", "warmup_steps=2", "--set", "schedule=constant", "--set", "grad_accum=2", "--set", "threads=1"]


NEEDS_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed (make test installs it: the test extra)")


def zero(stage: int, *rest) -> pytest.param:
    """A DeepSpeed ZeRO case of a two-process test (shipped config configs/accelerate/deepspeed_zero<stage>.yaml)."""
    return pytest.param(f"deepspeed_zero{stage}", "DEEPSPEED", *rest, marks=NEEDS_DEEPSPEED)


ONE_PROCESS_ON_CPU = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="compares two CPU processes with a one-process run in this process, which would run on the GPU here")


def launch_command(args: list[str], config: str = "ddp", processes: int = 2, precision: str = "no",
                   gpus: bool = False) -> tuple[list[str], dict]:
    """``accelerate launch`` of ``args`` (a script, or ``-m module ...``) as two CPU processes over gloo.

    Not ``--cpu``: accelerate then starts ONE process (several need mpirun); the shipped config starts two, and
    with no GPU ``get_accelerator`` joins them over gloo (FSDP2 for fsdp.yaml, in fp32 here). GPUs are hidden
    from them, so that on a machine with one GPU the two processes do not both take it with NCCL (``gpus``: they see it)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
           "--num_processes", str(processes), "--mixed_precision", precision, "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return cmd, env


def launch_two(args: list[str], cwd: Path, config: str = "ddp") -> str:
    """:func:`launch_command` run to its end; returns its log (stderr)."""
    cmd, env = launch_command(args, config)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def launch_two_and_kill(args: list[str], cwd: Path, config: str, checkpoint: Path) -> None:
    """:func:`launch_command`, killed (SIGKILL, every process) as soon as ``checkpoint`` holds a finished step."""
    import signal
    import time

    cmd, env = launch_command(args, config)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300  # a guard against a hung run, not a timing
    while not (checkpoint / "trainer_state.json").exists():
        try:
            proc.wait(timeout=0.02)  # returns only if the run ended: before its first checkpoint, a failure
            raise AssertionError(f"ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
        except subprocess.TimeoutExpired:
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed mid-run, not finished


def test_shards_are_contiguous_nearly_equal_and_concatenate_to_the_batch():
    items = list(range(10))
    parts = [dist.shard(items, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 4]
    assert sum(parts, []) == items
    assert dist.shard(items, 0, 1) == items


def test_without_a_process_group_reductions_are_the_identity_and_this_rank_is_main():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()
    assert dist.all_reduce_sum(2.5) == 2.5 and dist.all_reduce_mean([1.0, 3.0]) == [1.0, 3.0]
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_mean(t), t)
    assert dist.gather_object({"a": 1}) == [{"a": 1}] and dist.broadcast_object(7) == 7
    dist.barrier()


COLLECTIVES = """
import torch
from rlhfkit import distributed as dist

acc = dist.get_accelerator()  # joins the process group accelerate launch set up (gloo on CPU)
r = dist.rank()
assert acc.distributed_type.value == "MULTI_CPU" and torch.distributed.get_backend() == "gloo"
assert dist.world_size() == 2 and dist.is_main() == (r == 0) and acc.process_index == r
assert abs(dist.all_reduce_sum(1.5 * (r + 1)) - 4.5) < 1e-12
assert dist.all_reduce_sum([1.0, float(r)]) == [2.0, 1.0]
assert torch.equal(dist.all_reduce_mean(torch.tensor([float(r), 2.0])), torch.tensor([0.5, 2.0]))
assert dist.gather_object(f"r{r}") == ["r0", "r1"]
assert dist.broadcast_object("from rank 0" if r == 0 else None) == "from rank 0"
dist.barrier()
"""


def test_collectives_sum_mean_gather_and_broadcast_over_two_gloo_processes(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES, encoding="utf-8")
    launch_two([str(script)], tmp_path)


def test_only_rank_zero_writes_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = dist.metrics_logger(tmp_path / "run", "tensorboard")
    assert logger.log(3, {"loss": 1.0}) == {"step": 3, "loss": 1.0}
    logger.close()
    assert not (tmp_path / "run").exists()


def test_a_batch_that_does_not_split_over_the_processes_is_a_config_error(memorise_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="batch_size: 8 .* 3 processes"):
        train_sft(SFTConfig(model="tiny", data=str(memorise_file), output=str(tmp_path / "r"), batch_size=8))


@pytest.mark.parametrize("name, kind", [("single", "NO"), ("ddp", "MULTI_GPU"), ("multi_node", "MULTI_GPU"),
                                        ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_load_with_accelerates_own_reader(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2


@pytest.mark.slow
@ONE_PROCESS_ON_CPU
@pytest.mark.parametrize("config, kind", [("ddp", "MULTI_CPU"), ("fsdp", "FSDP"), zero(2), zero(3)])
def test_two_gloo_processes_follow_the_one_process_loss_curve_and_resume(memorise_file, tmp_path, config, kind):
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    # A saved model, as users start from: ZeRO-3 builds it already split (zero3_init_flag), a random init would differ
    start = tmp_path / "start"
    load_causal_lm("tiny").save_pretrained(start)
    load_tokenizer("tiny").save_pretrained(start)
    one = SFTConfig(model=str(start), data=str(memorise_file), output=str(tmp_path / "one"), max_steps=8, batch_size=8,
                    lr=5e-3, warmup_steps=2, schedule="constant", grad_accum=2, eval_fraction=0.0, report_to="none", threads=1)
    train_sft(one)

    two = tmp_path / "two"
    log = launch_two(["-m", "rlhfkit", "sft", *sft_args(memorise_file, two, 4, str(start))], tmp_path, config)  # stops at step 4
    assert f"2 processes ({kind}), 4 examples each" in log
    assert (two / "checkpoint" / "trainer_state.json").exists()
    # FSDP: the checkpoint holds the optimiser's state gathered from both shards, and resuming splits it again;
    # DeepSpeed: each rank wrote its own shard with the engine's save_checkpoint, and reads it back
    assert (two / "checkpoint" / "zero").is_dir() == (kind == "DEEPSPEED")
    launch_two(["-m", "rlhfkit", "sft", *sft_args(memorise_file, two, 8, str(start)), "--resume"], tmp_path, config)

    ref, got = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 9))  # rank 0 alone logs, each step once
    assert [r["tokens"] for r in got] == [r["tokens"] for r in ref]  # the same global batches
    # Same global batch, loss divided by the global token count: equal up to float summation order.
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-5)  # measured: < 2e-7
    assert got[-1]["loss"] < 0.9 * got[0]["loss"]
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one")
    b = AutoModelForCausalLM.from_pretrained(two)
    # DeepSpeed reduces flattened gradient buckets, in another order: Adam turns the last bits into ~1e-5 (measured ≤ 1.4e-5)
    atol = 5e-5 if kind == "DEEPSPEED" else 1e-5
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=atol), name
    assert len(read_safetensors_keys(two)) == len(read_safetensors_keys(tmp_path / "one"))  # a tied head saved once


def read_safetensors_keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


def rm_args(data: Path, out: Path, max_steps: int, model: str = "tiny-minilm") -> list[str]:
    # Constant schedule: the run stopped at step 4 and resumed to 8 sees the lr of an unbroken 8-step run.
    return ["rm", "train", "--model", model, "--data", str(data), "--output", str(out), "--max-steps", str(max_steps),
            "--batch-size", "8", "--lr", "2e-3", "--report-to", "none", "--set", "warmup_steps=2", "--set", "schedule=constant",
            "--set", "eval_fraction=0.25", "--set", "eval_every=0", "--set", "max_len=32", "--set", "threads=1"]


@pytest.mark.slow
@ONE_PROCESS_ON_CPU
@pytest.mark.parametrize("config, kind", [("ddp", "MULTI_CPU"), ("fsdp", "FSDP"), zero(2), zero(3)])
def test_reward_model_under_two_gloo_processes_follows_the_one_process_curve_and_resumes(tmp_path, config, kind):
    from rlhfkit.config import RewardConfig
    from rlhfkit.stages.reward_model import train_reward
    from tests.stages.test_reward_model import token_preference_data

    from rlhfkit.models.loading import load_sequence_classifier, load_tokenizer

    data = token_preference_data(tmp_path, n_prompts=40, k=3)  # 3 pairs per prompt, of uneven lengths
    start = tmp_path / "start"  # a saved model: ZeRO-3 builds it already split, and a random init would differ
    load_sequence_classifier("tiny-minilm").save_pretrained(start)
    load_tokenizer("tiny-minilm").save_pretrained(start)
    train_reward(RewardConfig(model=str(start), data=str(data), output=str(tmp_path / "one"), max_steps=8, batch_size=8,
                              lr=2e-3, warmup_steps=2, schedule="constant", eval_fraction=0.25, eval_every=0,
                              report_to="none", threads=1, max_len=32))
    two = tmp_path / "two"
    log = launch_two(["-m", "rlhfkit", *rm_args(data, two, 4, str(start))], tmp_path, config)  # stops at step 4, a checkpoint
    assert f"2 processes ({kind}), 4 prompts each" in log
    launch_two(["-m", "rlhfkit", *rm_args(data, two, 8, str(start)), "--resume"], tmp_path, config)

    ref, got = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 9))  # rank 0 alone logs, each step once
    assert [(r["n_pairs"], r["examples"]) for r in got] == [(r["n_pairs"], r["examples"]) for r in ref]  # same global batches
    # Each rank's pair sums ÷ the global pair count: the same loss up to float summation order.
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-4)
    assert [r["accuracy"] for r in got] == pytest.approx([r["accuracy"] for r in ref], abs=1e-9)
    assert got[-1]["eval_loss"] == pytest.approx(ref[-1]["eval_loss"], rel=1e-4)
    assert got[-1]["loss"] < got[0]["loss"]
    # The saved models score alike up to a constant: a score offset gets no Bradley–Terry gradient, so Adam turns
    # float noise in the head's bias into steps of size lr (measured: bias 7e-4 apart, score gaps < 1e-5 apart).
    from rlhfkit.data.groups import build_groups, flatten
    from rlhfkit.models.reward import RewardScorer

    prompts, responses, _ = flatten(build_groups(read_records(data, "auto")))
    a, b = RewardScorer.load(tmp_path / "one").score(prompts, responses), RewardScorer.load(two).score(prompts, responses)
    assert torch.allclose(a - a.mean(), b - b.mean(), atol=1e-4)
    assert (two / "split.json").read_text() == (tmp_path / "one" / "split.json").read_text()
    assert json.loads((two / "reward_stats.json").read_text())["std"] == pytest.approx(
        json.loads((tmp_path / "one" / "reward_stats.json").read_text())["std"], rel=1e-3)


def test_reward_model_shares_losses_add_up_to_the_whole_batch_loss():
    from rlhfkit.data.groups import build_groups, flatten
    from rlhfkit.stages.reward_model import batch_loss, loss_counts

    records = [{"prompt": "p1", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
               {"prompt": "p2", "chosen": "x", "rejected": "y", "margin": 0.5, "weight": 2.0},
               {"prompt": "p3", "response": "u", "score": 4, "weight": 0.5}, {"prompt": "p3", "response": "v", "score": 1},
               {"prompt": "p4", "responses": ["d", "e"], "ranking": [1, 0]}]
    groups = build_groups(records, rating_loss="regression")  # Bradley–Terry pairs and regression targets, weighted
    prompts, responses, offsets = flatten(groups)
    rewards = torch.randn(len(responses), generator=torch.Generator().manual_seed(0))
    whole, _ = batch_loss(rewards, groups, offsets, use_margin=True)
    total, start = 0.0, 0
    for r in range(2):
        mine = dist.shard(groups, r, 2)
        _, mine_responses, mine_offsets = flatten(mine)
        share, _ = batch_loss(rewards[start:start + len(mine_responses)], mine, mine_offsets, True, loss_counts(groups))
        total, start = total + float(share), start + len(mine_responses)
    assert total == pytest.approx(float(whole), rel=1e-6)


PPO_PROMPTS = ["Hi", "Tell me a story about a dragon.", "Why is the sky blue?", "Name a colour.", "What should I cook tonight?",
               "Count to three.", "Say yes.", "A haiku, please.", "Describe the sea.", "Who are you?"]


def ppo_args(prompts: Path, out: Path, max_steps: int) -> list[str]:
    # A constant schedule, so a run stopped at step 2 and resumed to 4 sees the lr of an unbroken 4-step run.
    return ["ppo", "--policy", "tiny", "--reward", "judge:length", "--value-model", "tiny", "--prompts", str(prompts), "--output", str(out),
            "--max-steps", str(max_steps), "--batch-size", "8", "--num-minibatches", "2", "--ppo-epochs", "2",
            "--max-new-tokens", "8", "--set", "schedule=constant", "--set", "report_to=none", "--set", "threads=1",
            "--set", "lr=5e-3"]


@pytest.mark.slow
@ONE_PROCESS_ON_CPU
def test_ppo_under_two_gloo_processes_follows_the_one_process_curve_and_resumes(tmp_path):
    from rlhfkit.config import PPOConfig
    from rlhfkit.stages.ppo import train_ppo
    from tests.conftest import write_jsonl

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t} for t in PPO_PROMPTS])
    # One process in micro-batches of 2 rows: the same chunks the two processes' shares of each minibatch are;
    # with row_noise, the sampling noise two processes use.
    # A separate value model (two DDP-wrapped modules, two backward passes per micro-batch).
    train_ppo(PPOConfig(policy="tiny", reward="judge:length", value_model="tiny", prompts=str(prompts), output=str(tmp_path / "one"),
                        max_steps=4, batch_size=8, num_minibatches=2, ppo_epochs=2, max_new_tokens=8, schedule="constant",
                        report_to="none", threads=1, lr=5e-3, grad_accum=2, row_noise=True))
    two = tmp_path / "two"
    log = launch_two(["-m", "rlhfkit", *ppo_args(prompts, two, 2)], tmp_path)  # stops at step 2 with a checkpoint
    assert "2 processes (MULTI_CPU), 4 prompts each" in log
    launch_two(["-m", "rlhfkit", *ppo_args(prompts, two, 4), "--resume"], tmp_path)

    ref, got = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4]  # rank 0 alone logs, each step once
    # The same responses (noise drawn per row of the global batch), advantages whitened over the gathered batch,
    # loss ÷ the global token count: equal up to float rounding (measured: < 4e-5 relative; the KL, a sum of
    # differences of log-probs near −10.8 each, to < 7e-6 absolute).
    assert [r["score"] for r in got] == [r["score"] for r in ref]
    for key in ("response_len", "kl", "entropy", "policy_loss", "value_loss", "approx_kl", "clipfrac", "ratio_max",
                "explained_variance", "beta"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-4, abs=2e-5), key
    assert got[-1]["value_loss"] < got[0]["value_loss"]
    assert (two / "checkpoint" / "trainer_state.json").exists() and (two / "adapter_config.json").exists()


@pytest.mark.slow
@ONE_PROCESS_ON_CPU
@pytest.mark.parametrize("config, kind, lora, value_model", [
    ("fsdp", "FSDP", True, "tiny"), ("fsdp", "FSDP", False, "head"),
    zero(2, True, "tiny"), zero(2, False, "head"), zero(3, True, "tiny"), zero(3, False, "head")])
def test_sharded_ppo_on_two_gloo_processes_is_killed_resumes_and_follows_the_one_process_curve(tmp_path, config, kind, lora,
                                                                                                value_model):
    from rlhfkit.config import PPOConfig
    from rlhfkit.stages.ppo import train_ppo
    from tests.conftest import write_jsonl

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t} for t in PPO_PROMPTS])
    settings = {"lora": lora, "value_model": value_model, "lr": 5e-3 if lora else 1e-3}
    train_ppo(PPOConfig(policy="tiny", reward="judge:length", prompts=str(prompts), output=str(tmp_path / "one"), max_steps=4,
                        batch_size=8, num_minibatches=2, ppo_epochs=2, max_new_tokens=8, schedule="constant", report_to="none",
                        threads=1, grad_accum=2, row_noise=True, **settings))
    two = tmp_path / "two"
    args = ["-m", "rlhfkit", "ppo", "--policy", "tiny", "--reward", "judge:length", "--value-model", value_model, "--prompts",
            str(prompts), "--output", str(two), "--max-steps", "4", "--batch-size", "8", "--num-minibatches", "2",
            "--ppo-epochs", "2", "--max-new-tokens", "8", "--set", "schedule=constant", "--set", "report_to=none",
            "--set", "threads=1", "--set", f"lr={settings['lr']}", "--set", f"lora={str(lora).lower()}", "--set", "save_every=1",
            "--set", "grad_accum=2"]  # each rank's share of a minibatch in two micro-batches, accumulated
    # The policy and the value model (a separate one: trained in the same sharded pass) split over the two
    # processes; killed after its first checkpoint, wherever it then is.
    launch_two_and_kill(args, tmp_path, config, two / "checkpoint")
    # DeepSpeed: the engine's own checkpoint of its shards (ZeRO-2: AdamW's state; ZeRO-3: the weights too) inside ours
    assert (two / "checkpoint" / "zero").is_dir() == (kind == "DEEPSPEED")
    log = launch_two([*args, "--resume"], tmp_path, config)
    assert f"2 processes ({kind}), 4 prompts each" in log and "resumed from step" in log

    ref, got = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    # Measured: every metric within 1e-5 absolute (the KL, a sum of log-prob differences, the largest), as under DDP.
    assert [r["score"] for r in got] == [r["score"] for r in ref]
    for key in ("response_len", "kl", "entropy", "policy_loss", "value_loss", "approx_kl", "clipfrac", "ratio_max", "beta"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-4, abs=2e-5), key
    # Each update's weights reach the whole models the rollout samples with: its log-probs are the trainer's.
    assert max(r["logprob_mismatch"] for r in got) < 1e-4
    assert got[-1]["value_loss"] < got[0]["value_loss"]


def test_sampling_noise_belongs_to_a_row_of_the_global_batch_whatever_the_split():
    from rlhfkit.accel.sampler import inverse_cdf
    from rlhfkit.stages.ppo import step_uniforms

    whole = step_uniforms(0, 3, 4, 0, 4)
    halves = [step_uniforms(0, 3, 4, 0, 2), step_uniforms(0, 3, 4, 2, 4)]
    assert torch.equal(torch.stack([whole() for _ in range(5)]),
                       torch.cat([torch.stack([h() for _ in range(5)]) for h in halves], 1))
    probs = torch.tensor([[0.0, 0.2, 0.3, 0.5]]).expand(20000, 4)
    tokens = inverse_cdf(probs, torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    freq = torch.bincount(tokens, minlength=4) / 20000.0
    assert freq[0] == 0 and torch.allclose(freq, probs[0], atol=0.015)  # a zero-probability token is never drawn


def test_reward_and_ppo_batches_that_do_not_split_over_the_processes_are_config_errors(tmp_path, monkeypatch):
    from rlhfkit.config import PPOConfig, RewardConfig
    from rlhfkit.stages.ppo import train_ppo
    from rlhfkit.stages.reward_model import train_reward

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="batch_size: 8 prompts .* 3 processes"):
        train_reward(RewardConfig(model="tiny-minilm", data=str(tmp_path / "unread.jsonl"), output=str(tmp_path / "rm"), batch_size=8))
    with pytest.raises(ConfigError, match="batch_size: 8 does not split into 2 minibatches × 3 processes"):
        train_ppo(PPOConfig(policy="tiny", reward="judge:length", prompts=str(tmp_path / "unread.jsonl"),
                            output=str(tmp_path / "ppo"), batch_size=8, num_minibatches=2))


def test_resuming_in_another_mode_than_the_checkpoints_is_one_clear_error(tmp_path):
    from rlhfkit.run import Run

    run = Run("sft", SFTConfig(model="tiny", data=str(tmp_path / "unread.jsonl"), output=str(tmp_path / "run")))
    run.optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    fsdp_state = {"state": {"model.embed_tokens.weight": {"step": torch.tensor(1.0)}}, "param_groups": []}  # keyed by name
    with pytest.raises(ConfigError, match="written under FSDP and this run is not under FSDP"):
        run.load_optimizer(fsdp_state, tmp_path)
    # a DeepSpeed checkpoint holds no optimiser state of ours (the engine wrote its own shards)
    with pytest.raises(ConfigError, match="written under DeepSpeed and this run is not under DeepSpeed"):
        run.load_optimizer(None, tmp_path)
    run.load_optimizer(run.optimizer.state_dict(), tmp_path)  # a one-process checkpoint loads as before
    run.engine = object()  # a run under DeepSpeed, given a checkpoint of one process
    with pytest.raises(ConfigError, match="written without DeepSpeed and this run is under DeepSpeed"):
        run.load_optimizer(run.optimizer.state_dict(), tmp_path)


def launch_two_expecting_error(args: list[str], cwd: Path, config: str) -> str:
    """:func:`launch_command` run to its end, which must be a failure; returns its log (stderr)."""
    cmd, env = launch_command(args, config)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
@NEEDS_DEEPSPEED
@ONE_PROCESS_ON_CPU
def test_what_zero3_cannot_save_is_refused_before_training(memorise_file, tmp_path):
    from tests.stages.test_reward_model import token_preference_data

    # a LoRA reward model's merge, and SFT's merged copy, need whole weights, which no ZeRO-3 rank holds
    log = launch_two_expecting_error(["-m", "rlhfkit", *rm_args(token_preference_data(tmp_path, n_prompts=8, k=2), tmp_path / "rm", 2),
                                      "--set", "lora=true"], tmp_path, "deepspeed_zero3")
    assert "lora: a LoRA reward model is not supported under DEEPSPEED" in log
    log = launch_two_expecting_error(["-m", "rlhfkit", "sft", *sft_args(memorise_file, tmp_path / "sft", 2), "--set", "lora=true",
                                      "--set", "merge_lora=true"], tmp_path, "deepspeed_zero3")
    assert "merge_lora: under DeepSpeed ZeRO-3" in log
    assert not (tmp_path / "rm" / "checkpoint").exists() and not (tmp_path / "sft" / "checkpoint").exists()


def test_dpo_under_a_sharding_launch_is_one_clear_error(tmp_path, monkeypatch):
    from rlhfkit.config import DPOConfig
    from rlhfkit.stages.dpo import train_dpo

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # as accelerate launch sets it, here for one process
    with pytest.raises(ConfigError, match="dpo: runs in one process, without FSDP or DeepSpeed"):
        train_dpo(DPOConfig(model="tiny", data=str(tmp_path / "unread.jsonl"), output=str(tmp_path / "dpo")))


@pytest.mark.slow
@NEEDS_DEEPSPEED
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is)")
@pytest.mark.parametrize("config", ["deepspeed_zero2", "deepspeed_zero3"])
def test_ppo_under_deepspeed_on_a_gpu_in_bf16_trains_checkpoints_and_resumes(tmp_path, config):
    from tests.conftest import write_jsonl

    # DeepSpeed's own GPU set-up (NCCL, its bf16 cast of the trained copy), one process on the GPU
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t} for t in PPO_PROMPTS])
    out = tmp_path / "run"
    for steps, extra in ((4, []), (6, ["--resume"])):
        args = ["-m", "rlhfkit", *ppo_args(prompts, out, steps), "--set", "save_every=2", "--set", "precision=bf16", *extra]
        cmd, env = launch_command(args, config, processes=1, precision="bf16", gpus=True)
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "checkpoint" / "zero").is_dir()
    log = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["policy_loss"]) and math.isfinite(r["value_loss"]) for r in log)
    # the synced weights reach the rollout: its log-probs are the trainer's up to bf16 rounding
    assert max(r["logprob_mismatch"] for r in log) < 0.1
