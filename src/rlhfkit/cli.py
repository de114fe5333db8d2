"""The ``rlhf`` command line (docs/design.md §8). Each command resolves its stage config and calls one function.

Every command takes ``--config FILE.yaml``, ``--seed N`` and ``--set key=value`` (any config key);
the named flags are shortcuts for the keys everyone uses. A stage command's flags are generated from its
config dataclass (``config_command``): each names a field and carries that field's ``metadata["help"]``.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import typer

from rlhfkit.config import (
    DPOConfig,
    EvalConfig,
    FeedbackConfig,
    GenerateConfig,
    GymConfig,
    PipelineConfig,
    PPOConfig,
    RewardConfig,
    SampleConfig,
    SFTConfig,
    SimulateConfig,
    load_config,
    parse_set,
)
from rlhfkit.data.formats import with_split

app = typer.Typer(help="rlhfkit: RLHF with PPO, end to end: SFT, sampling, feedback, reward model, PPO, evaluation.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
feedback_app = typer.Typer(help="Human feedback: the annotation app, import/export, simulated annotators.", no_args_is_help=True)
rm_app = typer.Typer(help="Reward model: train, score, evaluate.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.add_typer(rm_app, name="rm")

def _print_version(value: bool) -> None:
    if value:
        from rlhfkit import __version__

        typer.echo(f"rlhfkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print rlhfkit's version and exit.")) -> None:
    quiet_libraries()


def quiet_libraries() -> None:
    """Our progress bars and messages only: no weight-loading bars or deprecation notices from transformers, peft
    and torch between them. RLHFKIT_VERBOSE=1 keeps them."""
    import os
    import warnings

    if os.environ.get("RLHFKIT_VERBOSE") == "1":
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if "huggingface_hub" in sys.modules:  # imported already (in-process callers): its switch, not the variable
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


ConfigOpt = typer.Option(None, "--config", help="YAML file with config keys (CLI flags override it).")
SeedOpt = typer.Option(None, "--seed", help="Random seed.")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set key=value (repeatable).")
SplitOpt = typer.Option(None, "--split", help="The split to read when the data is a saved datasets folder or hf:NAME "
                                             "(the same as DATA:SPLIT; default: its only split or train).")


def resolve(cls: type, config: Optional[Path], sets: Optional[List[str]], **flags: Any):
    """Defaults < --config file < --set < named flags."""
    overrides = parse_set(sets)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(cls, config, overrides)


def fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line when ``--field-name`` (``--x/--no-x`` for a bool) won't do."""

    decls: tuple[str, ...] = ()  # the flag's spellings, e.g. ("--lora/--full",) or ("--resume",) for a bool without "off"
    type: Any = None  # the option's type (default: from the field's annotation; lists are comma-separated text)
    argument: bool = False  # a positional argument instead of an option


def _is_list(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(tp))
    return origin in (list, tuple) or tp in (list, tuple)


def _option_type(tp: Any) -> Any:
    """The type typer parses a field's flag as; from_dict checks and converts it like a --set value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _option_type(inner)
    if origin is typing.Literal:
        return type(args[0])
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        return str
    return tp


def _shown_default(value: Any, decls: tuple[str, ...]) -> str | None:
    """The dataclass default as help shows it (None: nothing to show)."""
    if isinstance(value, bool):
        if len(decls) == 1 and "/" in decls[0]:
            on, off = decls[0].split("/", 1)
            return on if value else off
        return None
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def config_command(cls: type, names: Sequence[str], flags: dict[str, str | Flag] | None = None) -> Callable:
    """Generate a command's options from the fields ``names`` of the config dataclass ``cls``.

    Each field becomes ``--field-name`` (a bool ``--field-name/--no-field-name``; ``flags`` renames one or makes it
    a positional argument), typed from the field's annotation, with the field's ``metadata["help"]`` as its help
    and the dataclass default shown. ``--config FILE`` and ``--set key=value`` are added too. The decorated
    function keeps its own parameters (hand-written options) and gets the resolved config as ``cfg``; the
    generated options appear where ``cfg`` stands in its signature. A flag left out is None and leaves the
    file's (or the default) value alone: defaults < --config < --set < flags.
    """
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    flags = flags or {}
    generated = []
    for name in names:
        f = by_name[name]  # a KeyError names a field the class lacks
        help_text = f.metadata.get("help")
        if not help_text:
            raise TypeError(f"{cls.__name__}.{name} has no metadata help")
        spec = flags.get(name, Flag())
        if isinstance(spec, str):
            spec = Flag((spec,))
        tp = spec.type or _option_type(hints[name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if spec.argument:
            info = typer.Argument(None, help=help_text, show_default=_shown_default(default, ()) or False)
        else:
            dash = name.replace("_", "-")
            decls = spec.decls or ((f"--{dash}/--no-{dash}",) if tp is bool else (f"--{dash}",))
            if tp is str and _is_list(hints[name]):
                help_text += " Comma-separated."
            elif _is_list(tp):
                help_text += " Repeatable."
            info = typer.Option(None, *decls, help=help_text, show_default=_shown_default(default, decls) or False)
        generated.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                           annotation=Optional[tp]))
    common = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=ConfigOpt, annotation=Optional[Path]),
              inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=SetOpt, annotation=Optional[List[str]])]

    def decorate(func: Callable) -> Callable:
        own = list(inspect.signature(func, eval_str=True).parameters.values())
        at = [p.name for p in own].index("cfg")
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name != "cfg"]
        clash = {p.name for p in params} & {p.name for p in generated + common}
        if clash:
            raise TypeError(f"{func.__name__}: parameters {sorted(clash)} clash with generated options")

        def command(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            given = {k: v for k, v in given.items() if v is not None and v != [] and v != ()}
            cfg = resolve(cls, kwargs.pop("config"), kwargs.pop("set_"), **given)
            return func(cfg=cfg, **kwargs)

        command.__name__, command.__qualname__, command.__doc__ = func.__name__, func.__qualname__, func.__doc__
        command.__module__ = func.__module__
        command.__signature__ = inspect.Signature(params[:at] + generated + params[at:] + common)
        return command

    return decorate


LORA_FLAGS = {"lora": "--lora/--full", "resume": "--resume"}  # spellings the defaults would not give


@app.command()
@config_command(SFTConfig, ["model", "data", "output", "max_steps", "batch_size", "lr", "lora", "merge_lora", "resume",
                            "report_to", "seed"], LORA_FLAGS)
def sft(cfg, split: Optional[str] = SplitOpt):
    """Supervised fine-tuning (loss on response tokens only), full or LoRA."""
    from rlhfkit.stages.sft import train_sft

    if not cfg.data:
        fail("--data is required (an SFT JSONL file)")
    cfg.data = with_split(cfg.data, split)
    train_sft(cfg)


@app.command()
@config_command(GenerateConfig, ["model", "max_new_tokens", "temperature", "top_p", "top_k", "batch_size", "chat",
                                 "generation", "seed"])
def generate(
    prompt: Optional[str] = typer.Option(None, help="One prompt."),
    prompts: Optional[Path] = typer.Option(None, help="Prompt JSONL file."),
    cfg=None,
    output: Optional[Path] = typer.Option(None, help="Write {prompt, response} JSONL here instead of printing."),
):
    """Answer one prompt or a JSONL file of prompts with any checkpoint."""
    import json

    from rlhfkit.models.generation import generate_file

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
@config_command(SampleConfig, ["model", "prompts", "k", "output", "max_new_tokens", "temperature", "top_p", "top_k",
                               "batch_size", "seed"], {"k": Flag(("--samples-per-prompt", "--k"))})  # as ppo and eval spell it
def sample(cfg, split: Optional[str] = SplitOpt):
    """K candidate responses per prompt, with the model and sampling settings recorded (resumable)."""
    from rlhfkit.stages.sample import sample_candidates

    if not cfg.prompts:
        fail("--prompts is required (a prompt JSONL file)")
    cfg.prompts = with_split(cfg.prompts, split)
    try:
        sample_candidates(cfg)
    except ValueError as e:
        fail(str(e))


def feedback_command(*names: str) -> Callable:
    """``config_command`` over FeedbackConfig; every feedback command also takes --db and --seed."""
    return config_command(FeedbackConfig, ["db", *names, "seed"])


def _need_project(cfg) -> None:
    if not cfg.project:
        fail("--project is required")


@feedback_app.command("serve")
@feedback_command("host", "port", "admin_token_file", "media")
def feedback_serve(
    cfg,
    max_body: int = typer.Option(1024 * 1024, "--max-body", min=1024, help="Largest request body in bytes (else 413)."),
):
    """Run the annotation app (the page at /, the API at /api). Admin token: $RLHFKIT_ADMIN_TOKEN or a file."""
    import logging

    import uvicorn

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.auth import load_admin_token

    token, where = load_admin_token(cfg.db, Path(cfg.admin_token_file) if cfg.admin_token_file else None)
    # The audit log (failed logins: address and reason, never the token) goes to stderr with the time.
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.WARNING)
    typer.echo(f"feedback app on http://{cfg.host}:{cfg.port}/  database {cfg.db}  admin token in {where}", err=True)
    uvicorn.run(create_app(cfg.db, token, max_body=max_body, media=cfg.media), host=cfg.host, port=cfg.port, log_level="warning")


@feedback_app.command("import")
@feedback_command("project", "kinds", "gold", "guidelines", "annotators_per_task", "max_held", "hold_minutes")
def feedback_import(
    candidates: Optional[Path] = typer.Option(None, help="Candidates JSONL from `rlhf sample`."),
    cfg=None,
):
    """Load candidates into a project as tasks (creates the project; prompts already there are skipped)."""
    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.importer import import_candidates, read_guidelines

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
@config_command(SimulateConfig, ["judge", "candidates", "kind", "output", "annotators", "temperature", "flip_rate",
                                 "edit_to", "edit_error_rate", "seed"])
def feedback_simulate(cfg):
    """Simulated annotators: turn a gold judge's scores into noisy rate/rank/compare/edit feedback."""
    from rlhfkit.feedback.simulate import simulate_feedback

    if not cfg.candidates:
        fail("--candidates is required (a JSONL file from `rlhf sample`)")
    try:
        simulate_feedback(cfg)
    except ValueError as e:
        fail(str(e))


NameOpt = typer.Option(..., "--name", help="The annotator's name.")


@feedback_app.command("add-annotator")
@feedback_command()
def feedback_add_annotator(cfg, name: str = NameOpt):
    """Create an annotator and print their token (shown once; only its hash is stored)."""
    from sqlalchemy import select

    from rlhfkit.feedback.auth import create_annotator
    from rlhfkit.feedback.checks import BadField, check_name
    from rlhfkit.feedback.db import Annotator, Database

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


def _change_annotator(cfg: FeedbackConfig, name: str, change: Any) -> Any:
    """Run ``change(session, annotator)`` on the named annotator in one transaction; returns what it returns."""
    from rlhfkit.feedback.auth import annotator_named
    from rlhfkit.feedback.db import Database

    database = Database(cfg.db)
    try:
        with database.tx() as s:
            ann = annotator_named(s, name)
            if ann is None:
                fail(f"--name: no annotator named {name!r}")
            return change(s, ann)
    finally:
        database.dispose()


def _takes_effect() -> str:
    from rlhfkit.feedback.auth import TOKEN_CACHE_SECONDS

    return f"a running server sees this within {TOKEN_CACHE_SECONDS:g} s"


@feedback_app.command("disable-annotator")
@feedback_command()
def feedback_disable_annotator(cfg, name: str = NameOpt):
    """Refuse an annotator's token (their answers are kept); enable-annotator lets them in again."""
    _change_annotator(cfg, name, lambda s, ann: setattr(ann, "disabled", True))
    typer.echo(f"{name}: disabled ({_takes_effect()})", err=True)


@feedback_app.command("enable-annotator")
@feedback_command()
def feedback_enable_annotator(cfg, name: str = NameOpt):
    """Let a disabled annotator log in again with their token."""
    _change_annotator(cfg, name, lambda s, ann: setattr(ann, "disabled", False))
    typer.echo(f"{name}: enabled", err=True)


@feedback_app.command("reviewer")
@feedback_command()
def feedback_reviewer(cfg, name: str = NameOpt,
                      off: bool = typer.Option(False, "--off", help="Take the reviewer role away instead.")):
    """Make an annotator a reviewer: their page then offers the project's disagreements to resolve."""
    _change_annotator(cfg, name, lambda s, ann: setattr(ann, "reviewer", not off))
    typer.echo(f"{name}: {'no longer a reviewer' if off else 'reviewer'} ({_takes_effect()})", err=True)


@feedback_app.command("rotate-token")
@feedback_command()
def feedback_rotate_token(cfg, name: str = NameOpt):
    """Give an annotator a new token and print it (shown once); the old one stops working."""
    from rlhfkit.feedback.auth import rotate_token

    token = _change_annotator(cfg, name, lambda s, ann: rotate_token(ann))
    typer.echo(f"{name}: new token below ({_takes_effect()})", err=True)
    typer.echo(token)


@feedback_app.command("members")
@feedback_command("project")
def feedback_members(
    cfg,
    add: Optional[List[str]] = typer.Option(None, "--add", help="Annotator to let work on the project (repeatable)."),
    remove: Optional[List[str]] = typer.Option(None, "--remove", help="Annotator to take off the project (repeatable)."),
    open_to_all: Optional[bool] = typer.Option(None, "--open-to-all/--members-only",
                                               help="Every annotator may work on it, or its members only."),
):
    """Show or change who may work on a project. Adding a member makes the project members-only."""
    import json

    from rlhfkit.feedback import access
    from rlhfkit.feedback.auth import annotator_named
    from rlhfkit.feedback.db import Database, get_project

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
@feedback_command("project", "format", "merge", "labels", "min_gold_accuracy", "low_gold", "min_gold_answers")
def feedback_export(
    cfg,
    output: Optional[Path] = typer.Option(None, help="JSONL file to write."),
):
    """Write the answers as docs/design.md §3 records (pairs, rankings, ratings, edits) with annotator names;
    with --min-gold-accuracy, annotators below it are left out or down-weighted, each named with the reason."""
    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.export import GoldRule, judge_annotators, write_export

    _need_project(cfg)
    if output is None:
        fail("--output is required")
    database = Database(cfg.db)
    try:
        weights = None
        if cfg.min_gold_accuracy is not None:
            decisions = judge_annotators(database, cfg.project,
                                         GoldRule(cfg.min_gold_accuracy, cfg.low_gold, cfg.min_gold_answers))
            for d in decisions:
                typer.echo(f"annotator {d.annotator!r}: {d.why}", err=True)
            weights = {d.annotator: d.weight for d in decisions}
        n = write_export(output, database, cfg.project, cfg.format, merge=cfg.merge, weights=weights, labels=cfg.labels)
    except ValueError as e:
        fail(f"{e}; {output} is unchanged")
    finally:
        database.dispose()
    typer.echo(f"wrote {n} {cfg.format} records to {output}", err=True)


@feedback_app.command("arena")
def feedback_arena(
    eval_dir: Path = typer.Argument(..., help="An evaluation folder (eval.json, samples.jsonl) of `rlhf eval`."),
    db: str = typer.Option("feedback.db", help="The feedback app's database (a SQLite path or URL)."),
    project: str = typer.Option("", help="The arena project (default: from the folder's name)."),
    model: Optional[str] = typer.Option(None, help="The model judged (default: the last evaluated policy)."),
    reference: Optional[str] = typer.Option(None, help="What it is judged against (default: the reference)."),
    annotators_per_task: int = typer.Option(1, help="Annotators who judge each pair (a new project)."),
    wait: bool = typer.Option(False, help="Wait until every pair has its annotators' answers."),
    poll_seconds: float = typer.Option(10.0, help="With --wait: seconds between progress checks."),
    seed: int = typer.Option(0, help="Random seed of the task order and the bootstrap."),
):
    """Human A/B evaluation: make the blind arena project of an evaluation (once), then write the people's win
    rate with its interval, beside the gold judge's and the reward model's, to EVAL_DIR/human.json."""
    import json

    from rlhfkit.feedback.arena import arena_project_name, arena_results, human_summary, make_arena
    from rlhfkit.feedback.export import wait_for_answers
    from rlhfkit.feedback.db import Database

    for name in ("samples.jsonl", "eval.json"):
        if not (eval_dir / name).exists():
            fail(f"{eval_dir}: no {name} (run `rlhf eval --output {eval_dir}` first)")
    made = json.loads((eval_dir / "arena.json").read_text(encoding="utf-8")) if (eval_dir / "arena.json").exists() else {}
    database = Database(db)
    try:  # an arena made before (by --human or the pipeline) is read again under its own name and models
        info = make_arena(database, project or made.get("project") or arena_project_name(eval_dir), eval_dir,
                          model or made.get("model"), reference or made.get("reference"), annotators_per_task, seed)
        typer.echo(f"arena project {info['project']}: {info['tasks']} pairs to judge", err=True)
        if wait:
            wait_for_answers(database, info["project"], poll_seconds, lambda m: typer.echo(m, err=True))
        result = arena_results(database, eval_dir, seed=seed)
    except ValueError as e:
        fail(str(e))
    finally:
        database.dispose()
    typer.echo(human_summary(result))
    typer.echo(f"wrote {eval_dir / 'human.json'}", err=True)


@feedback_app.command("simulate-team")
def feedback_simulate_team(
    url: str = typer.Option("http://127.0.0.1:8000", help="The running feedback app."),
    token: List[str] = typer.Option(..., help="An annotator token (repeat: one simulated annotator each)."),
    judge: str = typer.Option(..., help="Gold judge the annotators answer by (rlhfkit.judges)."),
    prompts: List[Path] = typer.Option([], help="Prompt JSONL whose records the judge needs (repeat)."),
    project: List[str] = typer.Option([], help="Only these projects (repeat; default: every one they may see)."),
    temperature: float = typer.Option(0.0, help="Bradley–Terry temperature, in gold-score units."),
    flip_rate: float = typer.Option(0.0, help="Probability that a choice is reversed."),
    tie_margin: float = typer.Option(0.0, help="Perceived scores this close tie."),
    idle_seconds: float = typer.Option(0.0, help="Keep looking for new tasks this long before stopping (0: stop at once)."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Simulated annotators answering through the app's HTTP API, as people's browsers do (for demos and tests)."""
    from rlhfkit.data.formats import RecordError, read_records
    from rlhfkit.feedback.team import TeamSettings, records_by_prompt, run_team
    from rlhfkit.judges import get_judge

    try:
        records = records_by_prompt([r for p in prompts for r in read_records(p, "prompt")])
        settings = TeamSettings(temperature=temperature, flip_rate=flip_rate, tie_margin=tie_margin,
                                idle_seconds=idle_seconds, seed=seed, projects=list(project))
        run_team(url, list(token), get_judge(judge), records, settings, say=lambda m: typer.echo(m, err=True))
    except (RecordError, ValueError, RuntimeError) as e:
        fail(str(e))


@feedback_app.command("stats")
@feedback_command("project", "fast_seconds")
def feedback_stats(
    cfg,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
):
    """Progress per annotator (gold accuracy, agreement with the others, working seconds, too-fast answers) and
    agreement per task kind."""
    import json

    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.export import stats

    _need_project(cfg)
    database = Database(cfg.db)
    try:
        st = stats(database, cfg.project, cfg.fast_seconds)
    except ValueError as e:
        fail(str(e))
    finally:
        database.dispose()
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def fmt(x):  # names are people's own text: brackets print as typed, never as rich markup
        return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else escape(str(x))

    console = Console()
    t = Table(title=f"project {escape(cfg.project)}: tasks")
    for col in ("kind", "tasks", "gold", "answered", "answers"):
        t.add_column(col)
    for kind, row in st["kinds"].items():
        t.add_row(fmt(kind), *(fmt(row[c]) for c in ("tasks", "gold", "answered", "answers")))
    console.print(t)
    t = Table(title="annotators", caption=f"gold: gold tasks answered; agrees: share agreeing with the others on "
                                          f"shared tasks; median s: working seconds per task; fast: answers under "
                                          f"{cfg.fast_seconds:g} s")
    longest = max((len(row["annotator"]) for row in st["annotators"]), default=9)
    t.add_column("annotator", overflow="fold", min_width=min(longest, 24))  # a name is never cut short
    for col in ("done", "skipped", "held", "gold", "gold acc.", "agrees", "median s", "fast"):
        t.add_column(col)
    for row in st["annotators"]:
        t.add_row(fmt(row["annotator"]), *(fmt(row[c]) for c in ("done", "skipped", "held", "gold_answered", "gold_accuracy",
                                                                "agreement", "median_seconds", "fast_answers")))
    console.print(t)
    t = Table(title="agreement (tasks with 2+ answers)")
    for col in ("kind", "tasks", "pairwise agreement", "Krippendorff's α", "metric"):
        t.add_column(col)
    for kind, row in st["agreement"].items():
        t.add_row(fmt(kind), fmt(row["tasks_with_2plus"]), fmt(row["pairwise"]), fmt(row["alpha"]), fmt(row["metric"]))
    console.print(t)


@rm_app.command("train")
@config_command(RewardConfig, ["model", "data", "output", "max_steps", "batch_size", "lr", "lora", "eval_data", "resume",
                               "report_to", "seed"], LORA_FLAGS)
def rm_train(cfg, split: Optional[str] = SplitOpt):
    """Train a reward model (Bradley–Terry) from any mix of feedback; stores normalisation stats."""
    from rlhfkit.stages.reward_model import RewardHealthError, train_reward

    if not cfg.data:
        fail("--data is required (a feedback JSONL file)")
    cfg.data = with_split(cfg.data, split)
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
@config_command(PPOConfig, ["algo", "policy", "reward", "prompts", "output", "max_steps", "batch_size", "samples_per_prompt",
                            "max_new_tokens", "ppo_epochs", "num_minibatches", "lora", "merge_lora", "value_model", "generation",
                            "resume", "report_to", "seed"],
                LORA_FLAGS)
def ppo(cfg, split: Optional[str] = SplitOpt):
    """PPO against a reward model or a gold judge (KL penalty, GAE, clipped losses, health checks); --algo grpo, rloo
    or reinforce++ for a critic-free advantage on the same rollout, losses and checks."""
    from rlhfkit.stages.ppo import PPOHealthError, train_ppo

    if not cfg.prompts:
        fail("--prompts is required (a prompt JSONL file)")
    if not cfg.reward:
        fail("--reward is required (a reward-model folder or judge:NAME)")
    cfg.prompts = with_split(cfg.prompts, split)
    try:
        train_ppo(cfg)
    except PPOHealthError as e:
        fail(str(e), code=1)
    except ValueError as e:
        if type(e) is not ValueError:
            raise
        fail(str(e))


@app.command()
@config_command(DPOConfig, ["model", "data", "output", "beta", "loss_type", "max_steps", "batch_size", "lr", "lora", "merge_lora",
                            "eval_data", "eval_prompts", "eval_judge", "eval_reward", "resume", "report_to", "seed"], LORA_FLAGS)
def dpo(cfg, split: Optional[str] = SplitOpt):
    """DPO (or IPO) straight from feedback: pairs, rankings, ratings and edits, no reward model, no sampling."""
    from rlhfkit.stages.dpo import train_dpo

    if not cfg.data:
        fail("--data is required (a feedback JSONL file)")
    cfg.data = with_split(cfg.data, split)
    train_dpo(cfg)


@app.command()
@config_command(GymConfig, ["env_id", "output", "total_steps", "eval_episodes", "num_envs", "lr", "resume", "report_to",
                            "seed"], {"env_id": Flag(argument=True), "resume": "--resume"})
def gym(cfg):
    """Classic PPO on a Gymnasium environment (discrete or continuous actions) with the shared PPO maths."""
    import json

    from rlhfkit.stages.gym_ppo import train_gym

    summary = train_gym(cfg)
    typer.echo(json.dumps(summary.get("eval", summary)))


@app.command("eval")
@config_command(EvalConfig, ["models", "prompts", "output", "judge", "reward", "reference", "best_of", "sft_data",
                             "max_new_tokens", "max_prompts", "samples_per_prompt", "human", "db", "human_project",
                             "human_annotators", "seed"],
                {"models": Flag(("--model",), type=List[str])})
def eval_(cfg, split: Optional[str] = SplitOpt):
    """Checkpoints against a reference: RM and gold scores, KL, win rates with CIs, BLEU/ROUGE, perplexity."""
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.stages.evaluate import evaluate_models

    if not cfg.models:
        fail("--model is required (repeat it to compare several checkpoints)")
    if not cfg.prompts:
        fail("--prompts is required (a prompt JSONL file)")
    cfg.prompts = with_split(cfg.prompts, split)
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
    if cfg.human:
        from rlhfkit.feedback.arena import arena_project_name, make_arena
        from rlhfkit.feedback.db import Database

        database = Database(cfg.db)
        try:
            info = make_arena(database, cfg.human_project or arena_project_name(cfg.output), cfg.output,
                              annotators_per_task=cfg.human_annotators, seed=cfg.seed)
        except ValueError as e:
            fail(str(e))
        finally:
            database.dispose()
        typer.echo(f"arena project {info['project']}: {info['tasks']} pairs of {info['model']} and {info['reference']} "
                   f"to judge ({info['identical']} identical pairs count as ties); serve it with `rlhf feedback serve "
                   f"--db {cfg.db}`, then `rlhf feedback arena {cfg.output} --db {cfg.db}` reads the verdict")


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
@config_command(PipelineConfig, ["recipe", "output", "model", "budget_minutes", "algo", "feedback", "db", "wait", "rounds",
                                 "best_of", "seed"])
def pipeline(cfg):
    """Every stage in order (SFT → sample → feedback → reward model → PPO or --algo → eval → report), resuming finished ones."""
    from rlhfkit.stages.pipeline import run_pipeline
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
