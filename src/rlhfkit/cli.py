"""The ``rlhf`` command line (DESIGN §8). Each command resolves its stage config and calls one function.

Every command takes ``--config FILE.yaml``, ``--seed N`` and ``--set key=value`` (any config key);
the named flags below are shortcuts for the keys everyone uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

app = typer.Typer(help="rlhfkit: RLHF with PPO, end to end: SFT, sampling, feedback, reward model, PPO, evaluation.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
feedback_app = typer.Typer(help="Human feedback: the annotation app, import/export, simulated annotators.", no_args_is_help=True)
rm_app = typer.Typer(help="Reward model: train, score, evaluate.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.add_typer(rm_app, name="rm")

ConfigOpt = typer.Option(None, "--config", help="YAML file with config keys (CLI flags override it).")
SeedOpt = typer.Option(None, "--seed", help="Random seed.")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set key=value (repeatable).")


def resolve(cls: type, config: Optional[Path], sets: Optional[List[str]], **flags: Any):
    """Defaults < --config file < --set < named flags."""
    from rlhfkit.config import load_config, parse_set

    overrides = parse_set(sets)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(cls, config, overrides)


def fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def sft(
    model: Optional[str] = typer.Option(None, help="Model spec: default | tiny | path | hub id."),
    data: Optional[str] = typer.Option(None, help="SFT JSONL file."),
    output: Optional[str] = typer.Option(None, help="Run folder."),
    max_steps: Optional[int] = typer.Option(None, help="Optimiser steps."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per optimiser step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help="Train LoRA adapters or all weights."),
    resume: Optional[bool] = typer.Option(None, "--resume", help="Continue from the run folder's checkpoint."),
    report_to: Optional[str] = typer.Option(None, help="tensorboard | wandb | mlflow | none."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Supervised fine-tuning (loss on response tokens only), full or LoRA."""
    from rlhfkit.config import SFTConfig
    from rlhfkit.stages.sft import train_sft

    cfg = resolve(SFTConfig, config, set_, model=model, data=data, output=output, max_steps=max_steps,
                  batch_size=batch_size, lr=lr, lora=lora, resume=resume, report_to=report_to, seed=seed)
    if not cfg.data:
        fail("--data is required (an SFT JSONL file)")
    train_sft(cfg)


@app.command()
def generate(
    model: str = typer.Option("default", help="Model spec: default | tiny | path | hub id."),
    prompt: Optional[str] = typer.Option(None, help="One prompt."),
    prompts: Optional[Path] = typer.Option(None, help="Prompt JSONL file."),
    max_new_tokens: int = typer.Option(128, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, help="0 for greedy decoding."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold."),
    top_k: int = typer.Option(0, help="Top-k sampling (0: off)."),
    batch_size: int = typer.Option(8, help="Prompts per generation batch."),
    no_chat: bool = typer.Option(False, "--no-chat", help="Plain completion: do not apply the chat template."),
    generation: Optional[str] = typer.Option(None, help="Backend: transformers (default) | vllm (pip install vllm; GPU)."),
    output: Optional[Path] = typer.Option(None, help="Write {prompt, response} JSONL here instead of printing."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Answer one prompt or a JSONL file of prompts with any checkpoint."""
    import json

    from rlhfkit.config import GenerateConfig
    from rlhfkit.models.generation import generate_file

    cfg = resolve(GenerateConfig, config, set_, model=model, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, top_k=top_k, batch_size=batch_size, chat=not no_chat, generation=generation, seed=seed)
    if (prompt is None) == (prompts is None):
        fail("give exactly one of --prompt TEXT or --prompts FILE")
    records = generate_file(cfg, prompt=prompt, prompts=prompts, output=output)
    if output is None:
        for rec in records:
            if prompt is not None:
                typer.echo(rec["response"])
            else:
                typer.echo(json.dumps(rec, ensure_ascii=False))
    else:
        typer.echo(f"wrote {len(records)} responses to {output}", err=True)


@app.command()
def sample(
    model: Optional[str] = typer.Option(None, help="Model spec: default | tiny | path | hub id."),
    prompts: Optional[str] = typer.Option(None, help="Prompt JSONL file."),
    k: Optional[int] = typer.Option(None, "--k", help="Candidates per prompt (default 4)."),
    output: Optional[str] = typer.Option(None, help="Candidates JSONL (prompts already in it are skipped)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens to generate at most (default 64)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 1.0)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold."),
    top_k: Optional[int] = typer.Option(None, help="Top-k sampling (0: off)."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts per generation batch."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """K candidate responses per prompt, with the model and sampling settings recorded (resumable)."""
    from rlhfkit.config import SampleConfig
    from rlhfkit.stages.sample import sample_candidates

    cfg = resolve(SampleConfig, config, set_, model=model, prompts=prompts, k=k, output=output, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p, top_k=top_k, batch_size=batch_size, seed=seed)
    if not cfg.prompts:
        fail("--prompts is required (a prompt JSONL file)")
    try:
        sample_candidates(cfg)
    except ValueError as e:
        fail(str(e))


DbOpt = typer.Option(None, "--db", help="Database: a SQLite file (default feedback.db) or postgresql://user:pw@host/db.")
ProjectOpt = typer.Option(None, "--project", help="Project name.")


def _feedback_cfg(config: Optional[Path], set_: Optional[List[str]], **flags: Any):
    from rlhfkit.config import FeedbackConfig

    return resolve(FeedbackConfig, config, set_, **flags)


def _need_project(cfg) -> None:
    if not cfg.project:
        fail("--project is required")


@feedback_app.command("serve")
def feedback_serve(
    db: Optional[str] = DbOpt,
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port to listen on (default 8000)."),
    admin_token_file: Optional[str] = typer.Option(None, help="Admin token file (default: beside the SQLite file)."),
    max_body: int = typer.Option(1024 * 1024, "--max-body", min=1024, help="Largest request body in bytes (else 413)."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Run the annotation app (the page at /, the API at /api). Admin token: $RLHFKIT_ADMIN_TOKEN or a file."""
    import logging

    import uvicorn

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.auth import load_admin_token

    cfg = _feedback_cfg(config, set_, db=db, host=host, port=port, admin_token_file=admin_token_file, seed=seed)
    token, where = load_admin_token(cfg.db, Path(cfg.admin_token_file) if cfg.admin_token_file else None)
    # The audit log (failed logins: address and reason, never the token) goes to stderr with the time.
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.WARNING)
    typer.echo(f"feedback app on http://{cfg.host}:{cfg.port}/  database {cfg.db}  admin token in {where}", err=True)
    uvicorn.run(create_app(cfg.db, token, max_body=max_body), host=cfg.host, port=cfg.port, log_level="warning")


@feedback_app.command("import")
def feedback_import(
    db: Optional[str] = DbOpt, project: Optional[str] = ProjectOpt,
    candidates: Optional[Path] = typer.Option(None, help="Candidates JSONL from `rlhf sample`."),
    kinds: Optional[str] = typer.Option(None, help="Task kinds to make: rate,rank,compare,edit (default all)."),
    gold: Optional[str] = typer.Option(None, help="Candidates with known answers (\"gold\": {...}) to mix in."),
    guidelines: Optional[str] = typer.Option(None, help="Text/Markdown file with the project's guidelines."),
    annotators_per_task: Optional[int] = typer.Option(None, help="N: annotators per task (new project: 1)."),
    max_held: Optional[int] = typer.Option(None, help="Cap on tasks an annotator holds at once (new project: 5)."),
    hold_minutes: Optional[int] = typer.Option(None, help="A task held unanswered this long goes to others (new project: 60; 0: never)."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Load candidates into a project as tasks (creates the project; prompts already there are skipped)."""
    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.importer import import_candidates, read_guidelines

    cfg = _feedback_cfg(config, set_, db=db, project=project, kinds=kinds, gold=gold, guidelines=guidelines,
                        annotators_per_task=annotators_per_task, max_held=max_held, hold_minutes=hold_minutes, seed=seed)
    _need_project(cfg)
    if candidates is None:
        fail("--candidates is required (a JSONL file from `rlhf sample`)")
    text = read_guidelines(cfg.guidelines) if cfg.guidelines else None
    database = Database(cfg.db)
    try:
        counts = import_candidates(database, cfg.project, candidates, cfg.kinds, gold=cfg.gold, guidelines=text,
                                   annotators_per_task=cfg.annotators_per_task, max_held=cfg.max_held,
                                   hold_minutes=cfg.hold_minutes, seed=cfg.seed)
    except ValueError as e:
        fail(str(e))
    finally:
        database.dispose()
    typer.echo(f"project {cfg.project}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))


@feedback_app.command("simulate")
def feedback_simulate(
    judge: Optional[str] = typer.Option(None, help="Gold judge: sentiment | tutor | length | a recipe's judge."),
    candidates: Optional[str] = typer.Option(None, help="Candidates JSONL from `rlhf sample`."),
    kind: Optional[str] = typer.Option(None, help="rate | rank | compare | edit (default rank)."),
    output: Optional[str] = typer.Option(None, help="Feedback JSONL to write."),
    annotators: Optional[int] = typer.Option(None, help="Simulated annotators (sim-0, sim-1, ...)."),
    temperature: Optional[float] = typer.Option(None, help="Bradley–Terry temperature in gold-score units (0: none)."),
    flip_rate: Optional[float] = typer.Option(None, help="Probability that a choice is reversed."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Simulated annotators: turn a gold judge's scores into noisy rate/rank/compare/edit feedback."""
    from rlhfkit.config import SimulateConfig
    from rlhfkit.feedback.simulate import simulate_feedback

    cfg = resolve(SimulateConfig, config, set_, judge=judge, candidates=candidates, kind=kind, output=output,
                  annotators=annotators, temperature=temperature, flip_rate=flip_rate, seed=seed)
    if not cfg.candidates:
        fail("--candidates is required (a JSONL file from `rlhf sample`)")
    try:
        simulate_feedback(cfg)
    except ValueError as e:
        fail(str(e))


@feedback_app.command("add-annotator")
def feedback_add_annotator(
    db: Optional[str] = DbOpt, name: str = typer.Option(..., "--name", help="The annotator's name."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Create an annotator and print their token (shown once; only its hash is stored)."""
    from sqlalchemy import select

    from rlhfkit.feedback.auth import create_annotator
    from rlhfkit.feedback.checks import BadField, check_name
    from rlhfkit.feedback.db import Annotator, Database

    cfg = _feedback_cfg(config, set_, db=db, seed=seed)
    try:
        name = check_name(name, "--name")
    except BadField as e:
        fail(str(e))
    database = Database(cfg.db)
    with database.tx() as s:
        if s.scalar(select(Annotator).where(Annotator.name == name)) is not None:
            fail(f"--name: an annotator named {name!r} exists")
        _, token = create_annotator(s, name)
    database.dispose()
    typer.echo(token)


def _change_annotator(db: Optional[str], name: str, config: Optional[Path], set_: Optional[List[str]],
                      seed: Optional[int], change: Any) -> Any:
    """Run ``change(session, annotator)`` on the named annotator in one transaction; returns what it returns."""
    from rlhfkit.feedback.auth import annotator_named
    from rlhfkit.feedback.db import Database

    cfg = _feedback_cfg(config, set_, db=db, seed=seed)
    database = Database(cfg.db)
    try:
        with database.tx() as s:
            ann = annotator_named(s, name)
            if ann is None:
                fail(f"--name: no annotator named {name!r}")
            return change(s, ann)
    finally:
        database.dispose()


NameOpt = typer.Option(..., "--name", help="The annotator's name.")


def _takes_effect() -> str:
    from rlhfkit.feedback.auth import TOKEN_CACHE_SECONDS

    return f"a running server sees this within {TOKEN_CACHE_SECONDS:g} s"


@feedback_app.command("disable-annotator")
def feedback_disable_annotator(db: Optional[str] = DbOpt, name: str = NameOpt, config: Optional[Path] = ConfigOpt,
                               seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt):
    """Refuse an annotator's token (their answers are kept); enable-annotator lets them in again."""
    _change_annotator(db, name, config, set_, seed, lambda s, ann: setattr(ann, "disabled", True))
    typer.echo(f"{name}: disabled ({_takes_effect()})", err=True)


@feedback_app.command("enable-annotator")
def feedback_enable_annotator(db: Optional[str] = DbOpt, name: str = NameOpt, config: Optional[Path] = ConfigOpt,
                              seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt):
    """Let a disabled annotator log in again with their token."""
    _change_annotator(db, name, config, set_, seed, lambda s, ann: setattr(ann, "disabled", False))
    typer.echo(f"{name}: enabled", err=True)


@feedback_app.command("rotate-token")
def feedback_rotate_token(db: Optional[str] = DbOpt, name: str = NameOpt, config: Optional[Path] = ConfigOpt,
                          seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt):
    """Give an annotator a new token and print it (shown once); the old one stops working."""
    from rlhfkit.feedback.auth import rotate_token

    token = _change_annotator(db, name, config, set_, seed, lambda s, ann: rotate_token(ann))
    typer.echo(f"{name}: new token below ({_takes_effect()})", err=True)
    typer.echo(token)


@feedback_app.command("members")
def feedback_members(
    db: Optional[str] = DbOpt, project: Optional[str] = ProjectOpt,
    add: Optional[List[str]] = typer.Option(None, "--add", help="Annotator to let work on the project (repeatable)."),
    remove: Optional[List[str]] = typer.Option(None, "--remove", help="Annotator to take off the project (repeatable)."),
    open_to_all: Optional[bool] = typer.Option(None, "--open-to-all/--members-only",
                                               help="Every annotator may work on it, or its members only."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Show or change who may work on a project. Adding a member makes the project members-only."""
    import json

    from rlhfkit.feedback import access
    from rlhfkit.feedback.auth import annotator_named
    from rlhfkit.feedback.db import Database, get_project

    cfg = _feedback_cfg(config, set_, db=db, project=project, seed=seed)
    _need_project(cfg)
    database = Database(cfg.db)
    try:
        with database.tx() as s:
            p = get_project(s, cfg.project)
            if p is None:
                fail(f"--project: no project named {cfg.project!r}")
            for flag, names, change in (("--add", add, access.add_member), ("--remove", remove, access.remove_member)):
                for name in names or []:
                    ann = annotator_named(s, name)
                    if ann is None:
                        fail(f"{flag}: no annotator named {name!r}")
                    change(s, p, ann)
            if open_to_all is not None:
                p.open_to_all = open_to_all
            s.flush()
            state = access.describe(s, p)
    finally:
        database.dispose()
    typer.echo(json.dumps(state, ensure_ascii=False))


@feedback_app.command("export")
def feedback_export(
    db: Optional[str] = DbOpt, project: Optional[str] = ProjectOpt,
    output: Optional[Path] = typer.Option(None, help="JSONL file to write."),
    format: Optional[str] = typer.Option(None, "--format", help="all | pairs | rankings | ratings | edits (default all)."),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="Merge a task's rankings into one (default) or one per annotator."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Write the answers as DESIGN §3 records (pairs, rankings, ratings, edits) with annotator names."""
    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.export import write_export

    cfg = _feedback_cfg(config, set_, db=db, project=project, format=format, merge=merge, seed=seed)
    _need_project(cfg)
    if output is None:
        fail("--output is required")
    database = Database(cfg.db)
    try:
        n = write_export(output, database, cfg.project, cfg.format, merge=cfg.merge)
    except ValueError as e:
        fail(f"{e}; {output} is unchanged")
    finally:
        database.dispose()
    typer.echo(f"wrote {n} {cfg.format} records to {output}", err=True)


@feedback_app.command("stats")
def feedback_stats(
    db: Optional[str] = DbOpt, project: Optional[str] = ProjectOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Progress per annotator (with gold accuracy) and agreement per task kind."""
    import json

    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.export import stats

    cfg = _feedback_cfg(config, set_, db=db, project=project, seed=seed)
    _need_project(cfg)
    database = Database(cfg.db)
    try:
        st = stats(database, cfg.project)
    except ValueError as e:
        fail(str(e))
    finally:
        database.dispose()
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def fmt(x):
        return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    console = Console()
    t = Table(title=f"project {cfg.project}: tasks")
    for col in ("kind", "tasks", "gold", "answered", "answers"):
        t.add_column(col)
    for kind, row in st["kinds"].items():
        t.add_row(kind, *(fmt(row[c]) for c in ("tasks", "gold", "answered", "answers")))
    console.print(t)
    t = Table(title="annotators")
    for col in ("annotator", "done", "skipped", "held", "gold answered", "gold accuracy"):
        t.add_column(col)
    for row in st["annotators"]:
        t.add_row(row["annotator"], *(fmt(row[c]) for c in ("done", "skipped", "held", "gold_answered", "gold_accuracy")))
    console.print(t)
    t = Table(title="agreement (tasks with 2+ answers)")
    for col in ("kind", "tasks", "pairwise agreement", "Krippendorff's α", "metric"):
        t.add_column(col)
    for kind, row in st["agreement"].items():
        t.add_row(kind, fmt(row["tasks_with_2plus"]), fmt(row["pairwise"]), fmt(row["alpha"]), row["metric"])
    console.print(t)


@rm_app.command("train")
def rm_train(
    model: Optional[str] = typer.Option(None, help="Backbone spec: minilm (default) | default | tiny | tiny-minilm | path."),
    data: Optional[str] = typer.Option(None, help="Feedback JSONL (preference, ranking, rating, edit records)."),
    output: Optional[str] = typer.Option(None, help="Run folder (the trained reward model is saved here)."),
    max_steps: Optional[int] = typer.Option(None, help="Optimiser steps."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts per optimiser step (with all their pairs)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help="Train LoRA adapters (merged on save) or all weights."),
    eval_data: Optional[str] = typer.Option(None, help="Held-out feedback JSONL (default: a share of the prompts)."),
    resume: Optional[bool] = typer.Option(None, "--resume", help="Continue from the run folder's checkpoint."),
    report_to: Optional[str] = typer.Option(None, help="tensorboard | wandb | mlflow | none."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Train a reward model (Bradley–Terry) from any mix of feedback; stores normalisation stats."""
    from rlhfkit.config import RewardConfig
    from rlhfkit.stages.reward_model import RewardHealthError, train_reward

    cfg = resolve(RewardConfig, config, set_, model=model, data=data, output=output, max_steps=max_steps,
                  batch_size=batch_size, lr=lr, lora=lora, eval_data=eval_data, resume=resume, report_to=report_to, seed=seed)
    if not cfg.data:
        fail("--data is required (a feedback JSONL file)")
    try:
        train_reward(cfg)
    except RewardHealthError as e:
        fail(str(e), code=1)
    except ValueError as e:
        fail(str(e))


@rm_app.command("score")
def rm_score(
    model: str = typer.Option(..., help="Reward-model folder (or a backbone spec)."),
    data: str = typer.Option(..., help="Candidates JSONL ({\"responses\"}) or {\"prompt\",\"response\"} records."),
    output: Optional[str] = typer.Option(None, help="Write the records with \"rewards\"/\"reward\" added here."),
    batch_size: int = typer.Option(16, help="Responses per forward pass."),
    normalize: bool = typer.Option(False, "--normalize", help="Normalised scores (reward_stats.json) instead of raw."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Score responses with a reward model; prints {"n","mean","std"} of the scores as JSON."""
    import json

    from rlhfkit.stages.reward_model import score_file

    summary = score_file(model, data, output, batch_size, normalize)
    typer.echo(json.dumps(summary))


@rm_app.command("eval")
def rm_eval(
    model: str = typer.Option(..., help="Reward-model folder (or a backbone spec)."),
    data: str = typer.Option(..., help="Feedback JSONL, or candidates JSONL with --judge."),
    judge: Optional[str] = typer.Option(None, help="Gold judge: accuracy on candidates' pairs whose gold scores differ."),
    batch_size: int = typer.Option(16, help="Responses per forward pass."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Pair accuracy, loss and reward gap of a reward model on feedback; prints JSON with "accuracy"."""
    import json

    from rlhfkit.stages.reward_model import eval_file

    typer.echo(json.dumps(eval_file(model, data, judge, batch_size)))


@app.command()
def ppo(
    policy: Optional[str] = typer.Option(None, help="Starting policy spec: an SFT run folder | default | tiny | path."),
    reward: Optional[str] = typer.Option(None, help="Reward: a reward-model folder or judge:NAME."),
    prompts: Optional[str] = typer.Option(None, help="Prompt JSONL file."),
    output: Optional[str] = typer.Option(None, help="Run folder."),
    max_steps: Optional[int] = typer.Option(None, help="PPO updates."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts per rollout batch."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Response length limit."),
    ppo_epochs: Optional[int] = typer.Option(None, help="Passes over each rollout batch."),
    num_minibatches: Optional[int] = typer.Option(None, help="Minibatches per epoch."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help="Train LoRA adapters (default) or all weights."),
    value_model: Optional[str] = typer.Option(None, help="reward (init from the reward model) | head | a model SPEC."),
    resume: Optional[bool] = typer.Option(None, "--resume", help="Continue from the run folder's checkpoint."),
    report_to: Optional[str] = typer.Option(None, help="tensorboard | wandb | mlflow | none."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """PPO against a reward model or a gold judge (KL penalty, GAE, clipped losses, health checks)."""
    from rlhfkit.config import PPOConfig
    from rlhfkit.stages.ppo import PPOHealthError, train_ppo

    cfg = resolve(PPOConfig, config, set_, policy=policy, reward=reward, prompts=prompts, output=output,
                  max_steps=max_steps, batch_size=batch_size, max_new_tokens=max_new_tokens, ppo_epochs=ppo_epochs,
                  num_minibatches=num_minibatches, lora=lora, value_model=value_model, resume=resume,
                  report_to=report_to, seed=seed)
    if not cfg.prompts:
        fail("--prompts is required (a prompt JSONL file)")
    if not cfg.reward:
        fail("--reward is required (a reward-model folder or judge:NAME)")
    try:
        train_ppo(cfg)
    except PPOHealthError as e:
        fail(str(e), code=1)
    except ValueError as e:
        if type(e) is not ValueError:
            raise
        fail(str(e))


@app.command()
def gym(
    env_id: Optional[str] = typer.Argument(None, help="Gymnasium environment id, e.g. CartPole-v1 or Pendulum-v1."),
    output: Optional[str] = typer.Option(None, help="Run folder."),
    total_steps: Optional[int] = typer.Option(None, help="Environment steps (all environments together)."),
    eval_episodes: Optional[int] = typer.Option(None, help="Deterministic episodes at the end, written to eval.json."),
    num_envs: Optional[int] = typer.Option(None, help="Parallel environments."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    resume: Optional[bool] = typer.Option(None, "--resume", help="Continue from the run folder's checkpoint."),
    report_to: Optional[str] = typer.Option(None, help="tensorboard | wandb | mlflow | none."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Classic PPO on a Gymnasium environment (discrete or continuous actions) with the shared PPO maths."""
    import json

    from rlhfkit.config import GymConfig
    from rlhfkit.stages.gym_ppo import train_gym

    cfg = resolve(GymConfig, config, set_, env_id=env_id, output=output, total_steps=total_steps,
                  eval_episodes=eval_episodes, num_envs=num_envs, lr=lr, resume=resume, report_to=report_to, seed=seed)
    summary = train_gym(cfg)
    typer.echo(json.dumps(summary.get("eval", summary)))


@app.command("eval")
def eval_(
    model: Optional[List[str]] = typer.Option(None, "--model", help="Model spec to evaluate, or label=spec (repeatable)."),
    prompts: Optional[str] = typer.Option(None, help="Prompt JSONL (records may carry \"reference\" answers)."),
    output: Optional[str] = typer.Option(None, help="Folder for eval.json and samples.jsonl."),
    judge: Optional[str] = typer.Option(None, help="Gold judge name: gold score and gold win rate."),
    reward: Optional[str] = typer.Option(None, help="Reward-model folder: RM score and RM win rate."),
    reference: Optional[str] = typer.Option(None, help="Reference policy for KL and win rates (default: the first --model)."),
    best_of: Optional[int] = typer.Option(None, help="Add the reference's best-of-N answers by RM score as a baseline."),
    sft_data: Optional[str] = typer.Option(None, help="Held-out SFT JSONL: perplexity of each model."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens generated at most per answer."),
    max_prompts: Optional[int] = typer.Option(None, help="Evaluate only the first N prompts."),
    samples_per_prompt: Optional[int] = typer.Option(None, help="Answers per prompt and model (less sampling noise, n× the decoding)."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Checkpoints against a reference: RM and gold scores, KL, win rates with CIs, BLEU/ROUGE, perplexity."""
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.config import EvalConfig
    from rlhfkit.stages.evaluate import evaluate_models

    cfg = resolve(EvalConfig, config, set_, models=model or None, prompts=prompts, output=output, judge=judge,
                  reward=reward, reference=reference, best_of=best_of, sft_data=sft_data,
                  max_new_tokens=max_new_tokens, max_prompts=max_prompts, samples_per_prompt=samples_per_prompt, seed=seed)
    if not cfg.models:
        fail("--model is required (repeat it to compare several checkpoints)")
    if not cfg.prompts:
        fail("--prompts is required (a prompt JSONL file)")
    result = evaluate_models(cfg)

    def fmt(x, spec=".3f"):
        return "–" if x is None else format(x, spec)

    def win(w):
        return "–" if w is None else f"{w['win_rate']:.2f} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}]"

    per = result.get("samples_per_prompt", 1)
    t = Table(title=f"eval on {result['n_prompts']} prompts{f' × {per} answers' if per > 1 else ''} (reference {result['reference']})")
    for col in ("model", "RM score", "gold score", "KL", "win vs ref (RM)", "win vs ref (gold)", "length", "no EOS"):
        t.add_column(col)
    for r in result["models"]:
        t.add_row(r["name"], fmt(r["rm_score"]), fmt(r["gold_score"]), fmt(r["kl"]), win(r["win_rate_rm"]),
                  win(r["win_rate_gold"]), fmt(r["response_len"], ".1f"), fmt(r["no_eos_frac"], ".2f"))
    Console().print(t)
    typer.echo(f"wrote {Path(cfg.output) / 'eval.json'}", err=True)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Pipeline run folder holding sft/, rm/, ppo/, eval/ (each optional)."),
    output: Optional[Path] = typer.Option(None, help="HTML file to write (default RUN_DIR/report.html)."),
):
    """Build the self-contained HTML report (training curves, KL frontier, over-optimisation, samples)."""
    from rlhfkit.eval.report import build_report

    if not run_dir.is_dir():
        fail(f"{run_dir}: no such run folder")
    typer.echo(str(build_report(run_dir, output)))


@app.command()
def pipeline(
    recipe: Optional[str] = typer.Option(None, help="Recipe name (tutor, sentiment, writer, support) or a recipe folder."),
    output: Optional[str] = typer.Option(None, help="Run folder."),
    model: Optional[str] = typer.Option(None, help="Starting model spec (default: the shipped SmolLM2)."),
    budget_minutes: Optional[float] = typer.Option(None, help="End in about this many minutes: counts planned from this machine's measured speed (default: the recipe's)."),
    feedback: Optional[str] = typer.Option(None, help="simulated (gold-judge annotators) or app (the feedback app)."),
    db: Optional[str] = typer.Option(None, help="Feedback app database (with --feedback app)."),
    wait: Optional[bool] = typer.Option(None, "--wait/--no-wait", help="With --feedback app: wait for the answers or use what is there."),
    rounds: Optional[int] = typer.Option(None, help="Sample → feedback → reward model → PPO rounds (iterated RLHF)."),
    best_of: Optional[int] = typer.Option(None, help="Eval: add the reference's best-of-N answers as a baseline."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Every stage in order (SFT → sample → feedback → reward model → PPO → eval → report), resuming finished ones."""
    from rlhfkit.stages.pipeline import PipelineConfig, run_pipeline

    cfg = resolve(PipelineConfig, config, set_, recipe=recipe, output=output, model=model, budget_minutes=budget_minutes,
                  feedback=feedback, db=db, wait=wait, rounds=rounds, best_of=best_of, seed=seed)
    from rlhfkit.stages.ppo import PPOHealthError
    from rlhfkit.stages.reward_model import RewardHealthError

    try:
        run_pipeline(cfg)
    except (PPOHealthError, RewardHealthError) as e:  # a stage stopped on non-finite numbers: say so, keep its checkpoint
        fail(f"{e}; rerun the pipeline to resume", code=1)


def main() -> None:
    """Console entry point: clear one-line errors for the mistakes people make."""
    from rlhfkit.config import ConfigError
    from rlhfkit.data.formats import RecordError
    from rlhfkit.models.loading import ModelSpecError

    try:
        app()
    except (ConfigError, RecordError, ModelSpecError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: the last checkpoint is kept; rerun with --resume to continue", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
