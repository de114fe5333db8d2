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


LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")
"""The modules that get LoRA adapters by default (the attention and MLP projections of Llama-style models)."""


def _lora_targets() -> list[str]:
    return list(LORA_TARGETS)


def field_help(cls: type) -> dict[str, str]:
    """``{field name: help text}`` of a config dataclass, from each field's ``metadata["help"]``."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}


@dataclass
class SFTConfig:
    """Supervised fine-tuning with loss on response tokens only."""

    model: str = field(default="default", metadata={"help": "Model spec: default | tiny | a local path | a hub id."})
    data: str = field(default="", metadata={"help": 'SFT JSONL ({"prompt", "completion"} or {"messages"} records).'})
    output: str = field(default="runs/sft", metadata={"help": "Run folder."})
    eval_data: str | None = field(default=None, metadata={
        "help": "Held-out SFT JSONL (default: an eval_fraction share of data)."})
    eval_fraction: float = field(default=0.05, metadata={
        "help": "Share of data held out for evaluation when eval_data is not given."})
    max_steps: int = field(default=200, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=8, metadata={
        "help": "Examples per optimiser step (split into grad_accum micro-batches)."})
    grad_accum: int = field(default=1, metadata={
        "help": "Micro-batches per optimiser step (batch_size is split into them)."})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate (LoRA commonly uses 1e-4 to 2e-4)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up steps."})
    schedule: typing.Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={
        "help": "Learning-rate decay after warm-up: cosine | linear | constant."})
    max_len: int = field(default=256, metadata={
        "help": "Tokens per example (the prompt is truncated from the left, the response from the right)."})
    max_prompt_len: int = field(default=192, metadata={"help": "Prompt tokens kept at most."})
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the adapters' scale is alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_targets: list[str] = field(default_factory=_lora_targets, metadata={"help": "Modules that get LoRA adapters."})
    merge_lora: bool = field(default=False, metadata={"help": "Also write a merged full model to output/merged."})
    grad_clip: float = field(default=1.0, metadata={"help": "Global gradient-norm clip."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass (less memory, more compute)."})
    precision: typing.Literal["auto", "fp32", "bf16"] = field(default="fp32", metadata={
        "help": "Matmuls: fp32 | bf16 autocast (weights and optimiser stay fp32) | auto (bf16 where the hardware "
                "runs it fast)."})
    eval_every: int = field(default=50, metadata={"help": "Steps between held-out evaluations (0: only at the end)."})
    save_every: int = field(default=50, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    log_every: int = field(default=1, metadata={"help": "Steps between metrics.jsonl lines."})
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = field(default="tensorboard", metadata={
        "help": "Tracker that also receives the metrics: tensorboard | wandb | mlflow | none."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    resume: bool = field(default=False, metadata={"help": "Continue from output/checkpoint if it exists."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: leave torch's default)."})


@dataclass
class GenerateConfig:
    """Answering prompts with a checkpoint (``rlhf generate``); also the sampling settings elsewhere."""

    model: str = field(default="default", metadata={"help": "Model spec: default | tiny | a local path | a hub id."})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens generated at most per answer."})
    temperature: float = field(default=0.0, metadata={
        "help": "Sampling temperature (0: greedy; otherwise the logits are divided by it before sampling)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch."})
    chat: bool = field(default=True, metadata={"help": "Apply the tokenizer's chat template."})
    generation: typing.Literal["transformers", "vllm"] = field(default="transformers", metadata={
        "help": "Generation backend: transformers | vllm (needs `pip install vllm` and a GPU)."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: leave torch's default)."})


@dataclass
class FeedbackConfig:
    """The feedback app and its import/export/stats (``rlhf feedback serve|import|export|stats``)."""

    db: str = field(default="feedback.db", metadata={
        "help": "Database: a SQLite file path or URL, or postgresql://user:password@host/dbname."})
    host: str = field(default="127.0.0.1", metadata={"help": "Serve: address to listen on."})
    port: int = field(default=8000, metadata={"help": "Serve: port to listen on."})
    media: str | None = field(default=None, metadata={
        "help": "Serve: the folder of the clips that prompts name (a candidates record's audio), played to annotators."})
    admin_token_file: str | None = field(default=None, metadata={
        "help": "Serve: admin token file (default: beside the SQLite file); $RLHFKIT_ADMIN_TOKEN wins over it."})
    project: str = field(default="", metadata={"help": "Project name."})
    kinds: list[str] = field(default_factory=lambda: ["rate", "rank", "compare", "edit"], metadata={
        "help": "Import: task kinds to make (rate, rank, compare, edit, thumbs)."})
    annotators_per_task: int | None = field(default=None, metadata={
        "help": "Import: how many annotators answer each task (a new project: 1)."})
    max_held: int | None = field(default=None, metadata={
        "help": "Import: cap on the tasks one annotator holds unanswered at once (a new project: 5)."})
    hold_minutes: int | None = field(default=None, metadata={
        "help": "Import: a task held unanswered this many minutes goes to others (a new project: 60; 0: never)."})
    guidelines: str | None = field(default=None, metadata={
        "help": "Import: a text or Markdown file with the project's guidelines."})
    gold: str | None = field(default=None, metadata={
        "help": 'Import: candidates with known answers ("gold": {...}), mixed in as gold tasks.'})
    format: typing.Literal["all", "pairs", "rankings", "ratings", "edits", "thumbs"] = field(default="all", metadata={
        "help": "Export: which records: all | pairs | rankings | ratings | edits | thumbs."})
    merge: bool = field(default=True, metadata={
        "help": "Export: merge several annotators' rankings of a task into one (Bradley–Terry)."})
    labels: typing.Literal["all", "majority", "resolved"] = field(default="all", metadata={
        "help": "Export: every annotator's answer (all), one per task by majority, or a reviewer's resolution where "
                "there is one (resolved)."})
    min_gold_accuracy: float | None = field(default=None, metadata={
        "help": "Export: annotators whose gold accuracy is below this (0-1) are left out or down-weighted (--low-gold)."})
    low_gold: typing.Literal["drop", "weight"] = field(default="drop", metadata={
        "help": "Export: what --min-gold-accuracy does: drop their records, or weight them by their gold accuracy."})
    min_gold_answers: int = field(default=3, metadata={
        "help": "Export: gold tasks an annotator must have answered to be judged by --min-gold-accuracy."})
    fast_seconds: float = field(default=2.0, metadata={
        "help": "Stats: answers given in fewer working seconds than this are counted as too fast."})
    seed: int = field(default=0, metadata={"help": "Import: seed of the order tasks are handed out in."})


@dataclass
class GymConfig:
    """PPO on a Gymnasium environment (``rlhf gym``). Defaults: CleanRL's ppo.py for CartPole-v1."""

    env_id: str = field(default="CartPole-v1", metadata={
        "help": "Gymnasium environment id (any registered one with a Box observation space), e.g. Pendulum-v1."})
    output: str = field(default="runs/gym", metadata={"help": "Run folder."})
    total_steps: int = field(default=100_000, metadata={"help": "Environment steps (all environments together)."})
    num_envs: int = field(default=4, metadata={"help": "Parallel environments (a gymnasium SyncVectorEnv)."})
    num_steps: int = field(default=128, metadata={
        "help": "Steps per environment per rollout (a rollout batch is num_envs × num_steps)."})
    update_epochs: int = field(default=4, metadata={"help": "PPO epochs over each rollout."})
    num_minibatches: int = field(default=4, metadata={"help": "Minibatches per epoch."})
    lr: float = field(default=2.5e-4, metadata={"help": "Adam learning rate (Adam eps 1e-5)."})
    anneal_lr: bool = field(default=True, metadata={"help": "Decay the learning rate linearly to 0 over the run."})
    gamma: float = field(default=0.99, metadata={"help": "Discount factor γ."})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE λ."})
    norm_adv: bool = field(default=True, metadata={"help": "Whiten advantages per minibatch."})
    clip_eps: float = field(default=0.2, metadata={
        "help": "Policy ratio clip ε (also the value clip when clip_vloss is on)."})
    anneal_clip: bool = field(default=False, metadata={
        "help": "Decay clip_eps linearly to 0 along with the learning rate."})
    clip_vloss: bool = field(default=True, metadata={"help": "Use the clipped value loss."})
    ent_coef: float = field(default=0.01, metadata={"help": "Entropy bonus coefficient."})
    vf_coef: float = field(default=0.5, metadata={"help": "Value loss coefficient."})
    max_grad_norm: float = field(default=0.5, metadata={"help": "Global gradient-norm clip."})
    target_kl: float | None = field(default=None, metadata={
        "help": "Stop an update's epochs early when approx-KL exceeds this (None: never)."})
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64], metadata={
        "help": "Widths of the tanh MLP layers (actor and critic)."})
    normalize_obs: bool = field(default=False, metadata={
        "help": "Running mean/std observation normalisation (for MuJoCo-like environments)."})
    normalize_reward: bool = field(default=False, metadata={
        "help": "Scale rewards by the running std of the discounted return."})
    clip_obs: float = field(default=10.0, metadata={"help": "Clip normalised observations to ±clip_obs."})
    clip_reward: float = field(default=10.0, metadata={"help": "Clip scaled rewards to ±clip_reward."})
    bootstrap_truncated: bool = field(default=True, metadata={
        "help": "On time-limit truncation, bootstrap from the final observation's value."})
    eval_episodes: int = field(default=0, metadata={
        "help": "Deterministic episodes at the end, written to eval.json (0: no evaluation)."})
    eval_every: int = field(default=0, metadata={
        "help": "Environment steps between deterministic evaluations logged as eval_return (0: off)."})
    log_every: int = field(default=1, metadata={"help": "Updates between metrics.jsonl lines."})
    save_every: int = field(default=10, metadata={"help": "Updates between checkpoints (and always at the end)."})
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = field(default="tensorboard", metadata={
        "help": "Tracker that also receives the metrics: tensorboard | wandb | mlflow | none."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    resume: bool = field(default=False, metadata={"help": "Continue from output/checkpoint/ if it exists."})
    threads: int = field(default=1, metadata={"help": "Torch threads (1 suits these small MLPs best)."})


@dataclass
class EvalConfig:
    """Checkpoints against a reference policy on a prompt set (``rlhf eval``)."""

    models: list[str] = field(default_factory=list, metadata={
        "help": "Model specs to evaluate; label=spec names one."})
    prompts: str = field(default="", metadata={
        "help": 'Prompt JSONL; records may carry "reference" answers and judge fields ("keywords", ...).'})
    output: str = field(default="runs/eval", metadata={"help": "Folder for eval.json and samples.jsonl."})
    reference: str | None = field(default=None, metadata={
        "help": "Reference policy spec for KL and win rates (default: the first model; listed first when not "
                "among them)."})
    judge: str | None = field(default=None, metadata={
        "help": "Gold judge name (rlhfkit.judges) for the gold score and gold win rate."})
    reward: str | None = field(default=None, metadata={
        "help": "Reward-model folder for the RM score and RM win rate."})
    best_of: int = field(default=0, metadata={
        "help": "N > 0 adds the reference's best-of-N answers by reward-model score (needs reward)."})
    sft_data: str | None = field(default=None, metadata={"help": "Held-out SFT JSONL: each model's perplexity on it."})
    max_prompts: int = field(default=0, metadata={"help": "Evaluate only the first N prompts (0: all)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens generated at most per answer."})
    samples_per_prompt: int = field(default=1, metadata={
        "help": "Answers per prompt and model: scores average over them, a prompt's win is the share of its answer "
                "pairs won and the interval resamples prompts (less sampling noise for n× the decoding)."})
    temperature: float = field(default=0.7, metadata={
        "help": "Sampling temperature of the answers (the KL estimate needs samples; 0: greedy)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation and scoring batch."})
    precision: typing.Literal["auto", "fp32", "bf16"] = field(default="fp32", metadata={
        "help": "Weights the answers are sampled with: fp32 | bf16 (KL and perplexity stay fp32) | auto (bf16 "
                "where the hardware runs it fast)."})
    chat: bool = field(default=True, metadata={"help": "Apply the tokenizer's chat template."})
    max_len: int = field(default=256, metadata={"help": "Perplexity: tokens per SFT example."})
    max_prompt_len: int = field(default=192, metadata={"help": "Perplexity: prompt tokens kept at most."})
    tie_tol: float = field(default=0.0, metadata={
        "help": "Score difference up to which two answers tie (a tie counts as half a win)."})
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the win-rate confidence interval."})
    confidence: float = field(default=0.95, metadata={"help": "Level of the win-rate confidence interval."})
    seed: int = field(default=0, metadata={
        "help": "Seed every model samples with, so identical models give identical answers."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: leave torch's default)."})
    human: bool = field(default=False, metadata={
        "help": "Then put the last model's answers and the reference's side by side, blind, as an arena project in "
                "--db for people to judge (`rlhf feedback arena OUTPUT` reads their verdict)."})
    db: str = field(default="feedback.db", metadata={"help": "Human evaluation: the feedback app's database."})
    human_project: str = field(default="", metadata={
        "help": "Human evaluation: the arena project's name (default: from the output folder)."})
    human_annotators: int = field(default=1, metadata={"help": "Human evaluation: annotators who judge each pair."})


@dataclass
class SampleConfig:
    """K candidate responses per prompt from any checkpoint (``rlhf sample``)."""

    model: str = field(default="default", metadata={"help": "Model spec of the policy that writes the candidates."})
    prompts: str = field(default="", metadata={
        "help": 'Prompt JSONL ({"prompt"} or {"messages"}; extra fields are copied through).'})
    output: str = field(default="runs/candidates.jsonl", metadata={
        "help": "Candidates JSONL; prompts already in it are skipped (resume)."})
    k: int = field(default=4, metadata={"help": "Candidates per prompt."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated at most per candidate."})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature (0: greedy, which makes the K candidates identical)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    batch_size: int = field(default=8, metadata={
        "help": "Prompts per generation batch (each batch generates batch_size × k rows)."})
    chat: bool = field(default=True, metadata={"help": "Apply the tokenizer's chat template."})
    limit: int = field(default=0, metadata={"help": "Sample only the first N prompts of the file (0: all)."})
    time_budget_minutes: float | None = field(default=None, metadata={
        "help": "Stop before a batch that would end past this many minutes (a batch as long as the mean so far); "
                "the prompts sampled by then are kept (None: sample every prompt)."})
    precision: typing.Literal["auto", "fp32", "bf16"] = field(default="fp32", metadata={
        "help": "Weights the candidates are sampled with: fp32 | bf16 | auto (bf16 where the hardware runs it fast)."})
    metrics: str = field(default="", metadata={
        "help": "Append each batch's seconds, rows, prompt width and decoding steps to this JSONL ('': none); "
                "the pipeline's budget reads them."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: leave torch's default)."})


@dataclass
class SimulateConfig:
    """Simulated annotators: gold-judge scores → human-like feedback (``rlhf feedback simulate``).

    Noise model: an annotator perceives u = gold + temperature · Gumbel noise, so a pairwise choice
    follows Bradley–Terry, P(a≻b) = σ((g_a − g_b)/temperature), and a ranking follows Plackett–Luce;
    then each choice is reversed with probability ``flip_rate``. Zero noise reproduces the gold order.
    """

    judge: str = field(default="sentiment", metadata={"help": "Gold judge name (rlhfkit.judges)."})
    candidates: str = field(default="", metadata={"help": "Candidates JSONL from `rlhf sample`."})
    output: str = field(default="runs/feedback.jsonl", metadata={"help": "Feedback JSONL to write."})
    kind: typing.Literal["rate", "rank", "compare", "edit", "thumbs"] = field(default="rank", metadata={
        "help": "Feedback kind to write: rate | rank | compare | edit | thumbs."})
    annotators: int = field(default=1, metadata={
        "help": "Simulated annotators (named sim-0, sim-1, ...); prompts are spread over them."})
    per_prompt: int = field(default=1, metadata={
        "help": "Annotators who answer each prompt (more than 1 gives overlap for agreement stats)."})
    temperature: float = field(default=0.0, metadata={
        "help": "Bradley–Terry temperature, in gold-score units (0: no choice noise)."})
    flip_rate: float = field(default=0.0, metadata={"help": "Probability that a choice is reversed (a careless click)."})
    bias_std: float = field(default=0.0, metadata={
        "help": "Spread of the per-annotator rating bias (lenient or harsh), in points of the 1–7 scale."})
    tie_margin: float = field(default=0.0, metadata={
        "help": "Perceived scores this close count as a tie (compare: skipped; rank: one place)."})
    compare_pairs: int = field(default=1, metadata={"help": "Compare: pairs asked per prompt (at most K·(K−1)/2)."})
    edit_to: typing.Literal["best", "reference"] = field(default="best", metadata={
        "help": "Edit: what the annotator rewrites the shown response into — best (the best other candidate, standing in "
                "for a rewrite) | reference (the prompt record's reference answer, e.g. what a speaker really said)."})
    edit_error_rate: float = field(default=0.0, metadata={
        "help": "Edit to reference: the share of the reference's words the annotator gets wrong (mishears, mistypes)."})
    seed: int = field(default=0, metadata={"help": "Random seed."})


@dataclass
class DPOConfig:
    """Direct preference optimisation from feedback (``rlhf dpo``): the policy learns the preferences with no reward
    model and no sampling; defaults after TRL's DPOTrainer (β 0.1, sigmoid loss)."""

    model: str = field(default="default", metadata={
        "help": "Starting policy spec: an SFT run folder (its merged/ model) | default | tiny | a path | a hub id."})
    data: str = field(default="", metadata={
        "help": "Feedback JSONL: preference pairs, rankings (every ordered pair), ratings (pairs within a prompt) or "
                "edits (edited ≻ original), mixed as the reward model reads them."})
    output: str = field(default="runs/dpo", metadata={"help": "Run folder."})
    eval_data: str | None = field(default=None, metadata={
        "help": "Held-out feedback JSONL (default: an eval_fraction share of the prompts)."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of prompts held out (a prompt is never on both sides)."})
    beta: float = field(default=0.1, metadata={
        "help": "The KL coefficient β: how far from the reference the policy may move (larger: closer to it)."})
    loss_type: typing.Literal["sigmoid", "ipo", "kto"] = field(default="sigmoid", metadata={
        "help": "The loss: sigmoid (DPO, −log σ(β·h)), ipo ((h − 1/(2β))², on length-averaged log-probs) or kto (KTO on "
                "unpaired answers: each one desirable or not, against a KL reference point)."})
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO: λ_D, the weight of a desirable answer's loss."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO: λ_U, the weight of an undesirable answer's loss."})
    desirable_rating: float = field(default=4.0, metadata={
        "help": "KTO: a rating at or above this is a desirable answer (4: the app's 'Acceptable'); files of 0/1 "
                "scores (unpaired labels, thumbs) are read as their label."})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "With the sigmoid loss, the assumed share of flipped labels ε (conservative DPO; 0: off)."})
    rpo_alpha: float = field(default=0.0, metadata={
        "help": "RPO: add α × the chosen answer's negative log-likelihood per token to the sigmoid or IPO loss, so the "
                "chosen answer's likelihood rises rather than only its margin (Pang et al. 2024; 0: off)."})
    max_steps: int = field(default=100, metadata={"help": "Optimiser steps."})
    time_budget_minutes: float | None = field(default=None, metadata={
        "help": "Stop after the step that leaves no room for another within this many minutes (None: run max_steps)."})
    batch_size: int = field(default=8, metadata={"help": "Preference pairs per optimiser step."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimiser step (batch_size is split into them)."})
    lr: float = field(default=5e-5, metadata={
        "help": "Peak learning rate, for LoRA adapters (the default); full fine-tuning (--full) wants about 10× less, e.g. 5e-6."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warm-up steps."})
    schedule: typing.Literal["cosine", "linear", "constant"] = field(default="linear", metadata={
        "help": "Learning-rate decay after warm-up: cosine | linear | constant."})
    max_len: int = field(default=256, metadata={"help": "Tokens of prompt + answer kept (the answer is cut from its end)."})
    max_prompt_len: int = field(default=192, metadata={"help": "Prompt tokens kept (from the end)."})
    chat: bool = field(default=True, metadata={"help": "Apply the tokenizer's chat template to prompts."})
    lora: bool = field(default=True, metadata={
        "help": "Train LoRA adapters (the reference is then the same weights, adapters off; else a frozen copy)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the adapters' scale is alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_targets: list[str] = field(default_factory=_lora_targets, metadata={"help": "Modules that get LoRA adapters."})
    merge_lora: bool = field(default=True, metadata={"help": "Also write a merged full model to output/merged."})
    grad_clip: float = field(default=1.0, metadata={"help": "Global gradient-norm clip."})
    precision: typing.Literal["auto", "fp32", "bf16"] = field(default="fp32", metadata={
        "help": "Matmuls: fp32, bf16 autocast, or auto (bf16 where the hardware runs it fast)."})
    eval_every: int = field(default=25, metadata={"help": "Steps between held-out evaluations (0: only at the end)."})
    eval_prompts: str | None = field(default=None, metadata={
        "help": "Held-out prompt JSONL: one answer to each, sampled with a fixed seed before training, at every "
                "held-out evaluation and after the last step, logged as eval/gold_score (with eval_judge), "
                "eval/rm_score (with eval_reward), eval/kl and eval/grading_accuracy, as PPO logs them."})
    eval_judge: str | None = field(default=None, metadata={
        "help": "Gold judge for eval_prompts, e.g. sentiment (logged as eval/gold_score)."})
    eval_reward: str | None = field(default=None, metadata={
        "help": "A reward-model folder that scores the eval_prompts answers (logged as eval/rm_score; DPO never "
                "trains on it)."})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Most tokens of an eval_prompts answer."})
    eval_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the eval_prompts answers."})
    time_budget_counts_eval: bool = field(default=True, metadata={
        "help": "Count the held-out evaluations' seconds against time_budget_minutes (false: the budget is training "
                "time alone, to compare methods at equal training time)."})
    save_every: int = field(default=25, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    log_every: int = field(default=1, metadata={"help": "Steps between metrics.jsonl lines."})
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = field(default="tensorboard", metadata={
        "help": "Where metrics go besides metrics.jsonl: tensorboard | wandb | mlflow | none."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    resume: bool = field(default=False, metadata={"help": "Continue from output/checkpoint if it exists."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: leave torch's default)."})


@dataclass
class RewardConfig:
    """Reward-model training from preference, ranking, rating and edit feedback (``rlhf rm train``)."""

    model: str = field(default="minilm", metadata={
        "help": "Backbone spec: minilm | default | tiny | tiny-minilm | a path (an encoder or a causal LM)."})
    data: str = field(default="", metadata={
        "help": "Feedback JSONL (any mix of preference, ranking, rating and edit records)."})
    output: str = field(default="runs/rm", metadata={"help": "Run folder (the trained reward model is saved here)."})
    eval_data: str | None = field(default=None, metadata={
        "help": "Held-out feedback JSONL (default: an eval_fraction share of the prompts)."})
    eval_fraction: float = field(default=0.1, metadata={
        "help": "Share of prompts held out (a prompt is never on both sides)."})
    max_steps: int = field(default=200, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=8, metadata={
        "help": "Prompts per optimiser step (all of a prompt's pairs go in the same batch)."})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate (LoRA commonly uses 1e-4 to 5e-4)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up steps."})
    schedule: typing.Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={
        "help": "Learning-rate decay after warm-up: cosine | linear | constant."})
    max_len: int = field(default=256, metadata={
        "help": "Tokens per (prompt, response) input; the prompt is cut from the left first."})
    use_margin: bool = field(default=False, metadata={
        "help": "Bradley–Terry with margin: −log σ(r_c − r_r − margin)."})
    rating_loss: typing.Literal["pairs", "regression"] = field(default="pairs", metadata={
        "help": "Ratings as pairs within a prompt (pairs) or an MSE on z-scored ratings (regression)."})
    lora: bool = field(default=False, metadata={
        "help": "Train LoRA adapters (merged into the saved model) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the adapters' scale is alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_targets: list[str] = field(default_factory=_lora_targets, metadata={"help": "Modules that get LoRA adapters."})
    trainable_layers: int = field(default=0, metadata={
        "help": "Full training: only the top N transformer layers and the head learn, embeddings frozen "
                "(0: all weights)."})
    pooling: typing.Literal["mean", "cls"] = field(default="cls", metadata={
        "help": "Encoder backbones: the [CLS] pooler, as AutoModelForSequenceClassification scores, or the mean of "
                "the non-pad tokens (plain transformers then needs the code in the model's README.md; causal LMs pool "
                "the last token)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Global gradient-norm clip."})
    precision: typing.Literal["auto", "fp32", "bf16"] = field(default="fp32", metadata={
        "help": "Training passes: fp32 | bf16 autocast (weights and optimiser stay fp32) | auto (bf16 where the "
                "hardware runs it fast)."})
    score_batch_size: int = field(default=32, metadata={
        "help": "Responses per forward pass when evaluating and computing reward_stats."})
    stats_policy: str | None = field(default=None, metadata={
        "help": "Compute reward_stats from this policy's samples on the training prompts (None: from the data's "
                "responses)."})
    stats_samples: int = field(default=256, metadata={
        "help": "Responses scored for reward_stats (a seeded subset of the data's, or generated by stats_policy)."})
    stats_max_new_tokens: int = field(default=64, metadata={"help": "With stats_policy: tokens per generated response."})
    stats_temperature: float = field(default=0.7, metadata={
        "help": "With stats_policy: sampling temperature (the PPO rollout default)."})
    eval_every: int = field(default=50, metadata={"help": "Steps between held-out evaluations (0: only at the end)."})
    save_every: int = field(default=50, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    log_every: int = field(default=1, metadata={"help": "Steps between metrics.jsonl lines."})
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = field(default="tensorboard", metadata={
        "help": "Tracker that also receives the metrics: tensorboard | wandb | mlflow | none."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    resume: bool = field(default=False, metadata={"help": "Continue from output/checkpoint if it exists."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: leave torch's default)."})


@dataclass
class PPOConfig:
    """PPO on a language model (``rlhf ppo``). Defaults: the N+ implementation details paper (Huang et al. 2024)."""

    algo: typing.Literal["ppo", "grpo", "rloo", "reinforce++"] = field(default="ppo", metadata={
        "help": "The advantage estimator: ppo (a value model and GAE) or a critic-free one: grpo (group-normalised "
                "scores, the KL in the loss), rloo (leave-one-out over the prompt's answers, the KL in the reward) or "
                "reinforce++ (per-token KL rewards, returns normalised over the batch). grpo and rloo need "
                "samples_per_prompt ≥ 2."})
    policy: str = field(default="default", metadata={
        "help": "Starting policy spec: an SFT run folder | default | tiny | a path | a hub id."})
    reward: str = field(default="", metadata={
        "help": "A reward-model folder (from `rlhf rm train`) or judge:NAME (a gold judge, for experiments)."})
    prompts: str = field(default="", metadata={"help": 'Prompt JSONL ({"prompt"} or {"messages"}).'})
    output: str = field(default="runs/ppo", metadata={"help": "Run folder."})
    reference: str | None = field(default=None, metadata={
        "help": "Reference model spec (None: the starting policy; with LoRA, its adapters off)."})
    value_model: str = field(default="reward", metadata={
        "help": "Value model: reward (initialised from the reward model) | head (a head on the policy) | a model "
                "spec."})
    lora: bool = field(default=True, metadata={
        "help": "Train LoRA adapters on the policy (the reference is then the same weights, adapters off)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the adapters' scale is alpha / r)."})
    lora_targets: list[str] = field(default_factory=_lora_targets, metadata={"help": "Modules that get LoRA adapters."})
    merge_lora: bool = field(default=False, metadata={
        "help": "Also write the policy merged into one full model in output/merged, loadable without peft."})
    max_steps: int = field(default=100, metadata={"help": "PPO updates (one rollout batch each)."})
    batch_size: int = field(default=8, metadata={
        "help": "Responses per rollout batch (batch_size / samples_per_prompt prompts)."})
    samples_per_prompt: int = field(default=1, metadata={
        "help": "Responses sampled per prompt in a batch (batch_size must divide by it)."})
    prompt_baseline: bool = field(default=True, metadata={
        "help": "With samples_per_prompt > 1: each score less the mean of its prompt's other responses' scores "
                "(leave-one-out), since a Bradley–Terry reward model's scores are defined only up to a per-prompt "
                "offset."})
    num_minibatches: int = field(default=2, metadata={
        "help": "Minibatches per PPO epoch (batch_size must divide by it)."})
    grad_accum: int = field(default=1, metadata={
        "help": "Micro-batches per minibatch (gradient accumulation, for memory)."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    lr: float | None = field(default=None, metadata={
        "help": "Policy learning rate (None: 3e-6 for full fine-tuning, 5e-5 with LoRA, whose adapters need a "
                "larger step)."})
    value_lr: float | None = field(default=None, metadata={
        "help": "Learning rate of the value model or head (None: the policy's)."})
    schedule: typing.Literal["linear", "constant"] = field(default="linear", metadata={
        "help": "Learning-rate schedule: linear (decay to 0 over max_steps) | constant."})
    adam_eps: float | None = field(default=None, metadata={
        "help": "Adam epsilon (None: 1e-5 for ppo, as the PPO implementation studies use; 1e-8 for the critic-free "
                "algorithms, as TRL and OpenRLHF run them)."})
    max_new_tokens: int = field(default=53, metadata={"help": "Response length limit in tokens."})
    max_prompt_len: int = field(default=256, metadata={"help": "Prompt tokens kept (from the end)."})
    temperature: float = field(default=0.7, metadata={
        "help": "Sampling temperature; it also divides the logits of every training log-prob."})
    row_noise: bool = field(default=False, metadata={
        "help": "Draw sampling noise per row of the global batch (always on under several processes, so that N "
                "processes sample what one does)."})
    chat: bool = field(default=True, metadata={"help": "Apply the tokenizer's chat template to prompts."})
    kl_estimator: typing.Literal["auto", "k1", "k2", "k3"] = field(default="auto", metadata={
        "help": "Per-token KL estimator: k1 (log π − log π_ref), k2 (½ of its square) or k3 ((1/r − 1) + log r, "
                "never negative); auto: k3 for grpo, whose KL is a loss term, k1 for the others."})
    loss_agg: typing.Literal["token", "sequence", "constant"] = field(default="token", metadata={
        "help": "Policy loss over a minibatch: token (mean over every token; PPO, DAPO), sequence (each answer's mean, "
                "then their mean; GRPO as published) or constant (token sum ÷ answers × max_new_tokens; Dr. GRPO)."})
    scale_rewards: bool = field(default=True, metadata={
        "help": "With grpo, divide each group's centred scores by the group's std (off: Dr. GRPO)."})
    kl_coef: float = field(default=0.05, metadata={
        "help": "KL coefficient β: weight of the per-token KL penalty (the initial value when adaptive)."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt β towards kl_target."})
    kl_target: float = field(default=6.0, metadata={"help": "Adaptive β: target KL per response, in nats."})
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive β: horizon in samples."})
    missing_eos_penalty: float | None = field(default=-1.0, metadata={
        "help": "Score given to responses without EOS within the limit (None: keep their score)."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor γ."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Masked whitening of advantages over the batch."})
    clip_eps: float = field(default=0.2, metadata={"help": "Policy ratio clip ε."})
    vf_clip: float | None = field(default=0.2, metadata={"help": "Value clip ε_v (None: no value clipping)."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss coefficient."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Global gradient-norm clip."})
    target_kl: float | None = field(default=None, metadata={
        "help": "Stop an update's epochs early when an epoch's mean approx-KL exceeds this (None: never)."})
    reward_batch_size: int = field(default=32, metadata={"help": "Responses per reward-model batch."})
    eval_prompts: str | None = field(default=None, metadata={
        "help": "Held-out prompt JSONL, one answer each with a fixed seed, before training, every eval_every steps "
                "and after the last, logged as eval/rm_score, eval/gold_score, eval/kl and eval/grading_accuracy, "
                "each evaluation a row of snapshots.json."})
    eval_judge: str | None = field(default=None, metadata={
        "help": "Gold judge for eval_prompts, e.g. sentiment (logged as eval/gold_score; a check, never what picks "
                "the snapshot)."})
    eval_every: int = field(default=0, metadata={
        "help": "Steps between held-out evaluations (0: only before training and at the end)."})
    keep_snapshots: bool | None = field(default=None, metadata={
        "help": "Save the policy at each held-out evaluation as snapshots/step-NNNN/ (None: on when that is a LoRA "
                "adapter of a few MB, off when it is a full copy of the weights, as with full fine-tuning or LoRA "
                "on an adapter run, which is merged)."})
    time_budget_minutes: float | None = field(default=None, metadata={
        "help": "Stop (evaluate, checkpoint, save) when one more update of the mean length so far would end past "
                "this many minutes of wall time."})
    time_budget_counts_eval: bool = field(default=True, metadata={
        "help": "Count the held-out evaluations' seconds against time_budget_minutes (false: the budget is training "
                "time alone, to compare methods at equal training time)."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass (less memory, more compute)."})
    precision: typing.Literal["auto", "fp32", "bf16"] = field(default="fp32", metadata={
        "help": "Matmuls: fp32 | bf16 autocast (fp32 weights and optimiser; rollout log-probs then come from the "
                "training pass, and small updates can round away) | auto (bf16 where the hardware runs it fast)."})
    generation: typing.Literal["transformers", "vllm"] = field(default="transformers", metadata={
        "help": "Rollout sampling: transformers (our decoding loop) | vllm (a vLLM engine in this process, on its GPU: "
                "the policy's weights are pushed into it after every update, LoRA merged, and every log-prob is "
                "recomputed by the policy; needs `pip install vllm` (0.11 or later) and a CUDA GPU)."})
    vllm_sleep: bool = field(default=True, metadata={
        "help": "With generation vllm: put the engine to sleep (weights to CPU memory, KV cache freed) while the models "
                "train, and wake it for the next rollout."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={
        "help": "With generation vllm: the share of the GPU's memory the engine may take (the models being trained "
                "share the GPU)."})
    health: bool = field(default=True, metadata={
        "help": "Health checks on the logged metrics (warnings; NaN/inf stops the run)."})
    save_every: int = field(default=10, metadata={"help": "Steps between checkpoints (and always at the end)."})
    log_every: int = field(default=1, metadata={"help": "Steps between metrics.jsonl lines."})
    report_to: typing.Literal["tensorboard", "wandb", "mlflow", "none"] = field(default="tensorboard", metadata={
        "help": "Tracker that also receives the metrics: tensorboard | wandb | mlflow | none."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    resume: bool = field(default=False, metadata={"help": "Continue from output/checkpoint if it exists."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: leave torch's default)."})


@dataclass
class PipelineConfig:
    """The whole pipeline for one recipe (``rlhf pipeline``)."""

    recipe: str = field(default="tutor", metadata={"help": "Recipe name (tutor, sentiment, writer, support, asr) or a recipe folder."})
    output: str = field(default="runs/pipeline", metadata={
        "help": "Run folder: sft/, candidates.jsonl, feedback.jsonl, rm/, ppo/, eval/, report.html."})
    model: str = field(default="default", metadata={"help": "Starting model spec (default: the shipped SmolLM2)."})
    budget_minutes: float | None = field(default=None, metadata={
        "help": "End in about this many minutes: counts planned from this machine's measured speed (default: the recipe's)."})
    feedback: str = field(default="simulated", metadata={
        "help": "Where feedback comes from: simulated (gold-judge annotators) or app (the feedback app)."})
    db: str = field(default="feedback.db", metadata={"help": "Feedback app database (with feedback: app)."})
    target: int = field(default=0, metadata={
        "help": "Feedback app: answers to wait for before training the reward model (0: one per task)."})
    wait: bool = field(default=True, metadata={
        "help": "Feedback app: wait for the target answers, or use the answers already there."})
    poll_seconds: float = field(default=10.0, metadata={"help": "Feedback app: seconds between progress checks while waiting."})
    rounds: int = field(default=1, metadata={"help": "Sample → feedback → reward model → PPO rounds (iterated RLHF)."})
    algo: str = field(default="", metadata={
        "help": "Policy optimisation: ppo, grpo, rloo, reinforce++ (online, the recipe's ppo section) or dpo (offline on "
                "the feedback, its dpo section); several, comma-separated (ppo,dpo), each train from the same SFT model, "
                "feedback and reward model in a share of the slot and the eval compares them; empty: the recipe's algo."})
    overrides: dict = field(default_factory=dict, metadata={
        "help": "Per-stage keys over the recipe's, e.g. {rm: {model: tiny-minilm}}."})
    best_of: int = field(default=0, metadata={"help": "Eval: add the reference's best-of-N answers by reward-model score as a baseline."})
    deadline: bool = field(default=True, metadata={
        "help": "PPO stops early (after an update, checkpoint saved) when the budget would be overrun."})
    eval_reserve_minutes: float | None = field(default=None, metadata={
        "help": "Minutes of the budget kept for eval and the report, eval then at its count (default: planned from measured speed)."})
    seed: int = field(default=0, metadata={"help": "Random seed of every stage."})
    threads: int = field(default=0, metadata={"help": "Torch threads (0: torch's default)."})
