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
    from rlhfkit.sft import train_sft

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
    output: Optional[Path] = typer.Option(None, help="Write {prompt, response} JSONL here instead of printing."),
    config: Optional[Path] = ConfigOpt, seed: Optional[int] = SeedOpt, set_: Optional[List[str]] = SetOpt,
):
    """Answer one prompt or a JSONL file of prompts with any checkpoint."""
    import json

    from rlhfkit.config import GenerateConfig
    from rlhfkit.generation import generate_file

    cfg = resolve(GenerateConfig, config, set_, model=model, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, top_k=top_k, batch_size=batch_size, chat=not no_chat, seed=seed)
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
