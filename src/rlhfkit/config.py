"""Stage configs: one dataclass per stage, loaded from YAML and overridden by CLI flags.

Resolution order: dataclass defaults < ``--config FILE.yaml`` < CLI flags (and ``--set key=value``).
An unknown key or a value of the wrong type is a :class:`ConfigError` that names the key. The resolved
config is written into the run folder as ``config.yaml`` so a run can be reproduced and resumed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem that names the file and key."""


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check (and gently convert) ``value`` against the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: {key}: cannot be null")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types (naming them)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: {key}: unknown key for {cls.__name__} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], k, where) for k, v in data.items()}
    return cls(**kwargs)


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Defaults < YAML file < overrides (an override of ``None`` sets the key to null, e.g. ``--set target_kl=null``)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        data.update(loaded)
        from_dict(cls, data, str(path))
    data.update(overrides or {})
    return from_dict(cls, data, str(path) if path and not overrides else "config")


def parse_set(items: list[str] | None) -> dict:
    """``["lr=1e-5", "lora=true"]`` → ``{"lr": "1e-5", "lora": "true"}`` (types are checked later)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, out_dir: str | Path) -> Path:
    """Write the resolved config to ``out_dir/config.yaml``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


@dataclass
class SFTConfig:
    """Supervised fine-tuning with loss on response tokens only."""

    model: str = "default"  # model spec: default | tiny | local path | hub id
    data: str = ""  # SFT JSONL ({"prompt","completion"} or {"messages"})
    output: str = "runs/sft"  # run folder
    eval_data: str | None = None  # held-out SFT JSONL; default: eval_fraction of data
    eval_fraction: float = 0.05  # share of data held out when eval_data is not given
    max_steps: int = 200  # optimiser steps
    batch_size: int = 8  # examples per optimiser step (before accumulation split)
    grad_accum: int = 1  # micro-batches per optimiser step (batch_size is split into them)
    lr: float = 5e-5  # peak learning rate (LoRA commonly uses ~1e-4 to 2e-4)
    weight_decay: float = 0.0
    warmup_steps: int = 10  # linear warm-up steps
    schedule: typing.Literal["cosine", "linear", "constant"] = "cosine"  # decay after warm-up
    max_len: int = 256  # tokens per example (prompt truncated from the left, response from the right)
    max_prompt_len: int = 192  # prompt tokens kept at most
    lora: bool = False  # train LoRA adapters instead of all weights
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    merge_lora: bool = False  # also write a merged full model to output/merged
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    precision: typing.Literal["auto", "fp32", "bf16"] = "fp32"  # matmuls: fp32 | bf16 autocast (weights and optimiser stay fp32; ~1.6× faster LoRA steps on CPUs with bf16 instructions) | auto: bf16 where the hardware runs it fast
    eval_every: int = 50  # steps between held-out evaluations (0: only at the end)
    save_every: int = 50  # steps between checkpoints (0: only at the end)
    log_every: int = 1
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = "tensorboard"
    seed: int = 0
    resume: bool = False  # continue from output/checkpoint if it exists
    threads: int = 0  # torch threads (0: leave torch's default)


@dataclass
class GenerateConfig:
    """Answering prompts with a checkpoint (``rlhf generate``); also the sampling settings elsewhere."""

    model: str = "default"  # model spec
    max_new_tokens: int = 128  # tokens generated at most per answer
    temperature: float = 0.0  # 0: greedy; otherwise logits are divided by it before sampling
    top_p: float = 1.0  # nucleus sampling threshold
    top_k: int = 0  # top-k sampling (0: off)
    batch_size: int = 8  # prompts per generation batch
    chat: bool = True  # apply the tokenizer's chat template
    generation: typing.Literal["transformers", "vllm"] = "transformers"  # backend; vllm needs `pip install vllm` and a GPU
    seed: int = 0
    threads: int = 0  # torch threads (0: leave torch's default)


@dataclass
class FeedbackConfig:
    """The feedback app and its import/export/stats (``rlhf feedback serve|import|export|stats``)."""

    db: str = "feedback.db"  # database: a SQLite file path or URL, or postgresql://user:password@host/dbname
    host: str = "127.0.0.1"  # serve: address to listen on
    port: int = 8000  # serve: port to listen on
    admin_token_file: str | None = None  # serve: admin token file (default: beside the SQLite file); env RLHFKIT_ADMIN_TOKEN wins
    project: str = ""  # project name
    kinds: list[str] = field(default_factory=lambda: ["rate", "rank", "compare", "edit"])  # import: task kinds to make
    annotators_per_task: int | None = None  # import: N, how many annotators answer each task (new project: 1)
    max_held: int | None = None  # import: cap on tasks one annotator holds unanswered at once (new project: 5)
    hold_minutes: int | None = None  # import: a task held unanswered this long goes to others (new project: 60; 0 never)
    guidelines: str | None = None  # import: a text/Markdown file with the project's guidelines
    gold: str | None = None  # import: candidates with known answers ("gold": {...}) mixed in as gold tasks
    format: typing.Literal["all", "pairs", "rankings", "ratings", "edits"] = "all"  # export: which records
    merge: bool = True  # export: merge several annotators' rankings of a task (Bradley–Terry) into one
    seed: int = 0  # import: seed of the order tasks are handed out in


@dataclass
class GymConfig:
    """PPO on a Gymnasium environment (``rlhf gym``). Defaults: CleanRL's ppo.py for CartPole-v1."""

    env_id: str = "CartPole-v1"  # any registered Gymnasium id with a Box observation space
    output: str = "runs/gym"  # run folder
    total_steps: int = 100_000  # environment steps (all envs together)
    num_envs: int = 4  # parallel environments (gymnasium SyncVectorEnv)
    num_steps: int = 128  # steps per environment per rollout (rollout batch = num_envs × num_steps)
    update_epochs: int = 4  # PPO epochs over each rollout
    num_minibatches: int = 4  # minibatches per epoch
    lr: float = 2.5e-4  # Adam learning rate (eps 1e-5)
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over the run
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE λ
    norm_adv: bool = True  # whiten advantages per minibatch
    clip_eps: float = 0.2  # policy ratio clip ε (also the value clip when clip_vloss)
    anneal_clip: bool = False  # decay clip_eps linearly to 0 with the learning rate (as rl-zoo's lin_0.2)
    clip_vloss: bool = True  # clipped value loss
    ent_coef: float = 0.01  # entropy bonus coefficient
    vf_coef: float = 0.5  # value loss coefficient
    max_grad_norm: float = 0.5  # global gradient-norm clip
    target_kl: float | None = None  # stop an update's epochs early when approx-KL exceeds this
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])  # tanh MLP widths (actor and critic)
    normalize_obs: bool = False  # running mean/std observation normalisation (use for MuJoCo-like envs)
    normalize_reward: bool = False  # scale rewards by the running std of the discounted return
    clip_obs: float = 10.0  # clip normalised observations to ±clip_obs
    clip_reward: float = 10.0  # clip scaled rewards to ±clip_reward
    bootstrap_truncated: bool = True  # time-limit truncation: bootstrap from the final observation's value
    eval_episodes: int = 0  # deterministic episodes at the end (eval.json); 0: no evaluation
    eval_every: int = 0  # env steps between deterministic evaluations logged as eval_return (0: off)
    log_every: int = 1  # updates between metrics.jsonl lines
    save_every: int = 10  # updates between checkpoints (and always at the end)
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = "tensorboard"
    seed: int = 0
    resume: bool = False  # continue from output/checkpoint.pt if it exists
    threads: int = 1  # torch threads: 1 is fastest for these small MLPs


@dataclass
class EvalConfig:
    """Checkpoints against a reference policy on a prompt set (``rlhf eval``)."""

    models: list[str] = field(default_factory=list)  # model specs to evaluate; "label=spec" names one
    prompts: str = ""  # prompt JSONL; records may carry "reference" answers and judge fields ("keywords", ...)
    output: str = "runs/eval"  # folder for eval.json and samples.jsonl
    reference: str | None = None  # reference policy spec for KL and win rates (default: the first model; listed first when not among them)
    judge: str | None = None  # gold judge name (rlhfkit.judges) for gold score and gold win rate
    reward: str | None = None  # reward-model folder for RM score and RM win rate
    best_of: int = 0  # N > 0 adds the reference's best-of-N answers by reward-model score (needs reward)
    sft_data: str | None = None  # held-out SFT JSONL: perplexity of each model on it
    max_prompts: int = 0  # evaluate only the first N prompts (0: all)
    max_new_tokens: int = 128  # tokens generated at most per answer
    samples_per_prompt: int = 1  # answers per prompt and model: scores average over them, a prompt's win is the share of its answer pairs won, the interval resamples prompts (less sampling noise for n× the decoding)
    temperature: float = 0.7  # answers are sampled at this temperature (the KL estimate needs samples; 0: greedy)
    batch_size: int = 8  # prompts per generation / scoring batch
    precision: typing.Literal["auto", "fp32", "bf16"] = "fp32"  # answers are sampled from fp32 weights or a bf16 copy (~1.5× faster decoding; KL and perplexity stay fp32) | auto: bf16 where the hardware runs it fast
    chat: bool = True  # apply the tokenizer's chat template
    max_len: int = 256  # perplexity: tokens per SFT example
    max_prompt_len: int = 192  # perplexity: prompt tokens kept at most
    tie_tol: float = 0.0  # score difference up to which two answers tie (a tie counts as half a win)
    bootstrap: int = 1000  # bootstrap resamples for the win-rate confidence interval
    confidence: float = 0.95  # level of the win-rate confidence interval
    seed: int = 0  # every model samples with this seed, so identical models give identical answers
    threads: int = 0  # torch threads (0: leave torch's default)


@dataclass
class SampleConfig:
    """K candidate responses per prompt from any checkpoint (``rlhf sample``)."""

    model: str = "default"  # model spec of the policy that writes the candidates
    prompts: str = ""  # prompt JSONL ({"prompt"} or {"messages"}, extra fields are copied through)
    output: str = "runs/candidates.jsonl"  # candidates JSONL; prompts already in it are skipped (resume)
    k: int = 4  # candidates per prompt
    max_new_tokens: int = 64  # tokens generated at most per candidate
    temperature: float = 1.0  # sampling temperature (0: greedy, which makes the K candidates identical)
    top_p: float = 1.0  # nucleus sampling threshold
    top_k: int = 0  # top-k sampling (0: off)
    batch_size: int = 8  # prompts per generation batch (each batch generates batch_size × k rows)
    chat: bool = True  # apply the tokenizer's chat template
    limit: int = 0  # sample only the first N prompts of the file (0: all)
    precision: typing.Literal["auto", "fp32", "bf16"] = "fp32"  # weights the candidates are sampled with: fp32 | bf16 (~1.5× faster decoding on CPUs with bf16 instructions) | auto: bf16 where the hardware runs it fast
    seed: int = 0
    threads: int = 0  # torch threads (0: leave torch's default)


@dataclass
class SimulateConfig:
    """Simulated annotators: gold-judge scores → human-like feedback (``rlhf feedback simulate``).

    Noise model: an annotator perceives u = gold + temperature · Gumbel noise, so a pairwise choice
    follows Bradley–Terry, P(a≻b) = σ((g_a − g_b)/temperature), and a ranking follows Plackett–Luce;
    then each choice is reversed with probability ``flip_rate``. Zero noise reproduces the gold order.
    """

    judge: str = "sentiment"  # gold judge name (rlhfkit.judges)
    candidates: str = ""  # candidates JSONL from `rlhf sample`
    output: str = "runs/feedback.jsonl"  # feedback JSONL (DESIGN §3 records)
    kind: typing.Literal["rate", "rank", "compare", "edit"] = "rank"  # feedback kind to write
    annotators: int = 1  # simulated people (named sim-0, sim-1, ...); prompts are spread over them
    per_prompt: int = 1  # annotators who answer each prompt (>1 gives overlap for agreement stats)
    temperature: float = 0.0  # Bradley–Terry temperature, in gold-score units (0: no choice noise)
    flip_rate: float = 0.0  # probability that a choice is reversed (a careless click)
    bias_std: float = 0.0  # spread of per-annotator rating bias, in points of the 1–7 scale (lenient/harsh)
    tie_margin: float = 0.0  # perceived scores this close count as a tie (compare: skipped; rank: one place)
    compare_pairs: int = 1  # compare: pairs asked per prompt (at most K·(K−1)/2)
    seed: int = 0


@dataclass
class RewardConfig:
    """Reward-model training from preference, ranking, rating and edit feedback (``rlhf rm train``)."""

    model: str = "minilm"  # backbone spec: minilm | default | tiny | tiny-minilm | path (an encoder or a causal LM)
    data: str = ""  # feedback JSONL (any mix of preference, ranking, rating, edit records)
    output: str = "runs/rm"  # run folder (the trained reward model is saved here)
    eval_data: str | None = None  # held-out feedback JSONL; default: eval_fraction of the prompts
    eval_fraction: float = 0.1  # share of PROMPTS held out (a prompt is never on both sides)
    max_steps: int = 200  # optimiser steps
    batch_size: int = 8  # prompts per optimiser step (all of a prompt's pairs go in the same batch)
    lr: float = 5e-5  # peak learning rate (LoRA commonly uses ~1e-4 to 5e-4)
    weight_decay: float = 0.0
    warmup_steps: int = 10  # linear warm-up steps
    schedule: typing.Literal["cosine", "linear", "constant"] = "cosine"  # decay after warm-up
    max_len: int = 256  # tokens per (prompt, response) input; the prompt is cut from the left first
    use_margin: bool = False  # Bradley–Terry with margin: −log σ(r_c − r_r − margin)
    rating_loss: typing.Literal["pairs", "regression"] = "pairs"  # ratings → pairs within a prompt, or MSE on z-scored ratings
    lora: bool = False  # train LoRA adapters (merged into the saved model) instead of all weights
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    trainable_layers: int = 0  # full training: only the top N transformer layers + head learn, embeddings frozen (0: all weights)
    pooling: typing.Literal["mean", "cls"] = "mean"  # encoder backbones: mean of the non-pad tokens, or the [CLS] pooler (causal LMs pool the last token)
    grad_clip: float = 1.0
    precision: typing.Literal["auto", "fp32", "bf16"] = "fp32"  # training passes: fp32 | bf16 autocast (weights and optimiser stay fp32) | auto: bf16 where the hardware runs it fast
    score_batch_size: int = 32  # responses per forward pass when evaluating and computing reward_stats
    stats_policy: str | None = None  # reward_stats from this policy's samples on the training prompts (None: the data's responses)
    stats_samples: int = 256  # responses scored for reward_stats (a seeded subset of the data's, or generated by stats_policy)
    stats_max_new_tokens: int = 64  # stats_policy: tokens per generated response
    stats_temperature: float = 0.7  # stats_policy: sampling temperature (the PPO rollout default)
    eval_every: int = 50  # steps between held-out evaluations (0: only at the end)
    save_every: int = 50  # steps between checkpoints (0: only at the end)
    log_every: int = 1
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = "tensorboard"
    seed: int = 0
    resume: bool = False  # continue from output/checkpoint if it exists
    threads: int = 0  # torch threads (0: leave torch's default)


@dataclass
class PPOConfig:
    """PPO on a language model (``rlhf ppo``). Defaults: the N+ implementation details paper (Huang et al. 2024)."""

    policy: str = "default"  # starting policy spec (an SFT run folder, default, tiny, path, hub id)
    reward: str = ""  # a reward-model folder (from `rlhf rm train`) or judge:NAME (a gold judge, for experiments)
    prompts: str = ""  # prompt JSONL ({"prompt"} or {"messages"})
    output: str = "runs/ppo"  # run folder
    reference: str | None = None  # reference model spec; None: the starting policy (with LoRA: adapters off)
    value_model: str = "reward"  # reward: init from the reward model | head: a head on the policy | a model SPEC
    lora: bool = True  # train LoRA adapters on the policy (the reference is then the same weights, adapters off)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    max_steps: int = 100  # PPO updates (one rollout batch each)
    batch_size: int = 8  # responses per rollout batch (batch_size / samples_per_prompt prompts)
    samples_per_prompt: int = 1  # responses sampled per prompt in a batch (batch_size must divide by it)
    prompt_baseline: bool = True  # with samples_per_prompt > 1: each score less the mean of its prompt's other responses' (leave-one-out), since a Bradley–Terry reward model's scores are defined only up to a per-prompt offset
    num_minibatches: int = 2  # minibatches per PPO epoch (batch_size must divide by it)
    grad_accum: int = 1  # micro-batches per minibatch (gradient accumulation, for memory)
    ppo_epochs: int = 4  # passes over each rollout batch
    lr: float | None = None  # policy learning rate; None: 3e-6 full (N+ paper), 5e-5 LoRA (adapters need a larger step)
    value_lr: float | None = None  # value model / head learning rate; None: the policy's
    schedule: typing.Literal["linear", "constant"] = "linear"  # learning-rate decay to 0 over max_steps, or none
    adam_eps: float = 1e-5  # Adam epsilon (N+ paper)
    max_new_tokens: int = 53  # response length limit (N+ paper: 53)
    max_prompt_len: int = 256  # prompt tokens kept (from the end)
    temperature: float = 0.7  # sampling temperature; also divides the logits of every training log-prob
    row_noise: bool = False  # sampling noise drawn per row of the global batch (always on under several processes: N processes sample what one does)
    chat: bool = True  # apply the tokenizer's chat template to prompts
    kl_coef: float = 0.05  # β: weight of the per-token KL penalty (initial value when adaptive)
    adaptive_kl: bool = False  # adapt β towards kl_target (Ziegler et al. 2019)
    kl_target: float = 6.0  # adaptive β: target KL per response (nats)
    kl_horizon: int = 10000  # adaptive β: horizon in samples
    missing_eos_penalty: float | None = -1.0  # score given to responses without EOS within the limit; None: keep the score
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    whiten_advantages: bool = True  # masked whitening of advantages over the batch
    clip_eps: float = 0.2  # policy ratio clip ε
    vf_clip: float | None = 0.2  # value clip ε_v (None: no value clipping)
    vf_coef: float = 0.1  # value loss coefficient
    max_grad_norm: float = 1.0  # global gradient-norm clip
    target_kl: float | None = None  # stop an update's epochs early when an epoch's mean approx-KL exceeds this
    reward_batch_size: int = 32  # responses per reward-model batch
    eval_prompts: str | None = None  # held-out prompt JSONL, one answer each with a fixed seed, before training, every eval_every steps and after the last: logged as eval/rm_score, eval/gold_score, eval/kl, eval/grading_accuracy, each evaluation a row of snapshots.json
    eval_judge: str | None = None  # gold judge for eval_prompts (logged as eval/gold_score; a check, never what picks the snapshot), e.g. sentiment
    eval_every: int = 0  # steps between held-out evaluations (0: only before training and at the end)
    keep_snapshots: bool | None = None  # save the policy at each held-out evaluation as snapshots/step-NNNN/; None: on when that is a LoRA adapter (a few MB), off when it is a full copy of the weights (full fine-tuning, or LoRA on an adapter run, which is merged)
    time_budget_minutes: float | None = None  # stop (evaluate, checkpoint, save) when one more update of the mean length so far would end past this wall time
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, more time)
    precision: typing.Literal["auto", "fp32", "bf16"] = "fp32"  # matmuls: fp32 | bf16 autocast (fp32 weights/optimiser; rollout log-probs then come from the training pass; ~1.6× faster passes on CPUs with bf16 instructions, but small updates round away) | auto: bf16 where the hardware runs it fast
    health: bool = True  # health checks on the logged metrics (warnings; NaN/inf stops the run)
    save_every: int = 10  # steps between checkpoints (and always at the end)
    log_every: int = 1  # steps between metrics.jsonl lines
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = "tensorboard"
    seed: int = 0
    resume: bool = False  # continue from output/checkpoint if it exists
    threads: int = 0  # torch threads (0: leave torch's default)
