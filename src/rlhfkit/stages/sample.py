"""``rlhf sample``: K candidate responses per prompt, for people or simulated annotators to judge.

One output line per prompt: the prompt (``prompt`` or ``messages``, as in the input), ``responses`` (its K
answers, each distinct text once: identical answers give people nothing to choose between, and a preference
needs two different texts), the ``model`` spec, the ``checkpoint`` that wrote them, the ``sampling`` settings, and every other
field of the input record copied through (e.g. a tutor prompt's ``keywords``).

Resumable by prompt: prompts already in the output file are skipped and each batch is appended and
flushed as soon as it is generated, so an interrupted run loses at most one batch. Each batch is seeded
from (seed, index of its first prompt in the input file), so a rerun of the same file is reproducible.

``time_budget_minutes``: a deadline from the start of the call (the model's loading included). Before each
batch after the first, if the seconds so far plus the mean batch's would pass it, sampling stops there and the
prompts already written are what the stage gives (the pipeline's budget sets it, so a machine slower than its
probe said costs prompts, not minutes past the budget).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from rlhfkit.config import SampleConfig
from rlhfkit.data.formats import iter_records, prompt_key, prompt_messages, read_records
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models.generation import decode_response, generate_ids

console = Console(stderr=True)
RESERVED = ("prompt", "messages", "responses", "model", "checkpoint", "sampling")


def done_prompts(path: Path) -> set[str]:
    """Keys of the prompts already sampled into ``path`` (a missing file → none).

    A last line cut off by an interrupted write is dropped, so that prompt is sampled again.
    """
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
    return {prompt_key(r) for _, r in iter_records(path, "prompt")}


def drop_cut_off_line(path: Path) -> None:
    """Cut a JSONL file back to its last complete line (an interrupted append leaves a line without its newline)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def checkpoint_of(spec: str) -> str:
    """What wrote the candidates: the folder for a local model, otherwise the spec itself."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def candidate_record(rec: dict, responses: list[str], cfg: SampleConfig) -> dict:
    out = {"prompt": rec["prompt"]} if "messages" not in rec else {"messages": rec["messages"]}
    out.update({"responses": responses, "model": cfg.model, "checkpoint": checkpoint_of(cfg.model),
                "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                             "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}})
    out.update({k: v for k, v in rec.items() if k not in RESERVED})
    return out


def sample_candidates(cfg: SampleConfig) -> int:
    """Write K candidates for every prompt not yet in ``cfg.output``; returns how many prompts were added."""
    from rlhfkit.accel import speed_up
    from rlhfkit.accel.precision import dtype_for
    from rlhfkit.accel.runtime import set_threads
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    if cfg.k < 1:
        raise ValueError(f"k: expected at least 1, got {cfg.k}")
    started = time.perf_counter()
    set_threads(cfg.threads)
    out = Path(cfg.output)
    records = read_records(cfg.prompts, "prompt")
    if cfg.limit:
        records = records[: cfg.limit]
    done = done_prompts(out)
    todo = [(i, r) for i, r in enumerate(records) if prompt_key(r) not in done]
    console.print(f"sample: {len(records)} prompts, {len(records) - len(todo)} already in {out}, {len(todo)} to sample (k={cfg.k})")
    if not todo:
        return 0
    tok = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, dtype=dtype_for(cfg.precision))
    speed_up(model, device=torch.device("cpu"), head_apart=True)  # fp32 products: the measured route (accel/); the head: Fp32Head's
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = [TextColumn("sample"), BarColumn(), TextColumn("{task.completed}/{task.total} prompts"), TimeRemainingColumn()]
    written, batch_s, alike = 0, [], 0
    metrics = Path(cfg.metrics) if cfg.metrics else None
    if metrics is not None:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        drop_cut_off_line(metrics)  # an interrupted write's half line would spoil the next one appended
    with out.open("a", encoding="utf-8") as f, Progress(*columns, console=console) as bar:
        task = bar.add_task("sample", total=len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            elapsed = time.perf_counter() - started
            if (cfg.time_budget_minutes is not None and batch_s
                    and elapsed + sum(batch_s) / len(batch_s) > 60 * cfg.time_budget_minutes):
                console.print(f"sample: time budget of {cfg.time_budget_minutes:g} min: stopped after {written} of "
                              f"{len(todo)} prompts ({elapsed:.0f} s; a batch takes {sum(batch_s) / len(batch_s):.0f} s)")
                break
            batch_started = time.perf_counter()
            batch = todo[start:start + cfg.batch_size]
            torch.manual_seed(cfg.seed * 1_000_003 + batch[0][0])
            ids = [encode_prompt(tok, prompt_messages(r), cfg.chat) for _, r in batch]
            rows = [p for p in ids for _ in range(cfg.k)]  # K copies of each prompt, side by side
            gen = generate_ids(model, tok, rows, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k,
                               batch_size=len(rows))
            texts = [decode_response(tok, g) for g in gen]
            for j, (_, rec) in enumerate(batch):
                distinct = list(dict.fromkeys(texts[j * cfg.k:(j + 1) * cfg.k]))  # each text once, in sampled order
                if len(distinct) < 2:
                    alike += 1
                    continue
                f.write(json.dumps(candidate_record(rec, distinct, cfg), ensure_ascii=False) + "\n")
            f.flush()
            written += len(batch)
            batch_s.append(time.perf_counter() - batch_started)
            if metrics is not None:  # the budget judges the machine's decoding speed by these (stages/budget.py)
                with metrics.open("a", encoding="utf-8") as m:
                    m.write(json.dumps({"step": len(batch_s), "time_step_s": batch_s[-1], "rows": len(rows),
                                        "prompt_tokens": max(map(len, rows)),
                                        "decode_steps": max(map(len, gen))}) + "\n")
            bar.advance(task, len(batch))
    console.print(f"sample: wrote {written - alike} prompts × up to {cfg.k} distinct candidates to {out}"
                  + (f"; {alike} left out, their {cfg.k} answers all one text (nothing to compare)" if alike else ""))
    return written - alike
