"""Bad-input review (not a test): a fixed corpus of broken input files through the real CLI, each run classified.

    .venv/bin/python bench/review_bad_inputs.py [--stage sft] [--timeout 120] [--show-all]

The project's rule: bad input gets one clear error line, ``file:line: field: problem`` or ``file: problem``, a
non-zero exit and no traceback; nothing bad is accepted silently. The corpus covers five stages (sft, rm train,
ppo, eval, feedback import): file-level faults every stage shares (empty, a folder, no such file, invalid UTF-8,
UTF-16, a byte-order mark, broken JSON, non-object lines, lone surrogates, NaN/Infinity, deep nesting, blank or
mistyped prompts, malformed messages) on each stage's main input, then each stage's own fields (wrong types,
missing fields, empty texts, equal texts, bad rankings, out-of-range numbers) and its other inputs (held-out
data, gold answers, guidelines).

Each case runs ``python -m rlhfkit ...`` once, in sequence (the machine may have few cores), with the tiny
models, one step and a per-run timeout, so a file accepted by mistake still finishes fast. Classes:
  clear        non-zero exit, one ``error:`` line that names the bad file, no traceback
  no-location  non-zero exit and no traceback, but the error does not name the file
  traceback    a Python traceback in the output
  silent       exit 0 (or still running at the timeout): the bad file was accepted
Prints a table per stage and the totals; exits 1 unless every case is clear.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER, MISSING = "folder", "missing"  # case contents that are not bytes: the path is a folder, or nothing
CLASSES = ("clear", "no-location", "traceback", "silent")


@dataclass(frozen=True)
class Stage:
    args: tuple[str, ...]  # the command, "{out}" standing for a fresh folder per run
    flag: str  # the option that takes the stage's main input file
    good: dict  # a valid record of the main input


STAGES = {
    "sft": Stage(("sft", "--model", "tiny", "--output", "{out}", "--max-steps", "1", "--batch-size", "1",
                  "--report-to", "none", "--set", "eval_fraction=0", "--set", "threads=1"),
                 "--data", {"prompt": "Say hi.", "completion": "Hi there."}),
    "rm train": Stage(("rm", "train", "--model", "tiny", "--output", "{out}", "--max-steps", "1", "--batch-size", "1",
                       "--report-to", "none", "--set", "stats_samples=2", "--set", "threads=1"),
                      "--data", {"prompt": "Say hi.", "chosen": "Hi there.", "rejected": "Go away."}),
    "ppo": Stage(("ppo", "--policy", "tiny", "--reward", "judge:length", "--output", "{out}", "--max-steps", "1",
                  "--batch-size", "2", "--num-minibatches", "1", "--ppo-epochs", "1", "--max-new-tokens", "2",
                  "--report-to", "none", "--set", "threads=1"),
                 "--prompts", {"prompt": "Say hi."}),
    "eval": Stage(("eval", "--model", "tiny", "--output", "{out}", "--judge", "length", "--max-new-tokens", "2",
                   "--set", "threads=1"),
                  "--prompts", {"prompt": "Say hi."}),
    "feedback import": Stage(("feedback", "import", "--db", "{out}/feedback.db", "--project", "review"),
                             "--candidates", {"prompt": "Say hi.", "responses": ["Hi there.", "Hello."]}),
}


@dataclass(frozen=True)
class Case:
    stage: str
    name: str
    content: bytes | str  # the bad file's bytes, or FOLDER / MISSING
    arg: str = ""  # how the bad file is passed ("{path}" in it), when not as the stage's main input
    extra: tuple[str, ...] = ()  # more options for this case


def jsonl(*records) -> bytes:
    """JSONL lines: records through json.dumps (which writes NaN and Infinity), a str as it is (e.g. 1e400)."""
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records)


def shared_cases(stage: str, good: dict) -> list[Case]:
    """Faults of the file and of the prompt, the same for every stage's main input."""
    line = jsonl(good)
    bare = {k: v for k, v in good.items() if k != "prompt"}
    faults = {
        "empty file": b"",
        "blank lines only": b"\n  \n\t\n",
        "a folder": FOLDER,
        "no such file": MISSING,
        "invalid UTF-8 on line 2": line + line.replace(b"Say hi.", b"Say \xff."),
        "UTF-16 text": json.dumps(good).encode("utf-16"),
        "UTF-8 byte-order mark": codecs.BOM_UTF8 + line,
        "truncated JSON": line[: line.index(b":") + 1] + b"\n",
        "trailing garbage": line.rstrip() + b" ok\n",
        "a JSON list line": b"[1, 2]\n",
        "a JSON null line": b"null\n",
        "lone surrogate in the prompt": line.replace(b"Say hi.", b"Say \\udc80hi."),
        "NaN in an extra field": jsonl({**good, "weight": float("nan")}),
        "Infinity in an extra field": jsonl({**good, "weight": float("inf")}),
        "nesting 100000 deep": line.rstrip()[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
        "whitespace-only prompt": jsonl({**good, "prompt": " \n "}),
        "prompt is a number": jsonl({**good, "prompt": 7}),
        "messages that are not objects": jsonl({**bare, "messages": [1, 2]}),
        "a message without content": jsonl({**bare, "messages": [{"role": "user"}]}),
        "only a system message": jsonl({**bare, "messages": [{"role": "system", "content": "Be brief."}]}),
    }
    return [Case(stage, name, content) for name, content in faults.items()]


def own_cases() -> list[Case]:
    """Each stage's own fields and its other inputs."""
    p = {"prompt": "Say hi."}
    pair = {**p, "chosen": "Hi there.", "rejected": "Go away."}
    rank = {**p, "responses": ["Hi there.", "Hello.", "Go away."], "ranking": [0, 1, 2]}
    rate = [{**p, "response": "Hi there.", "score": 6}, {**p, "response": "Go away.", "score": 2}]
    cand = {**p, "responses": ["Hi there.", "Hello."]}
    regression = ("--set", "rating_loss=regression")
    cases = {
        "sft": {
            "completion missing": jsonl(p),
            "completion is a list": jsonl({**p, "completion": ["Hi."]}),
            "whitespace-only completion": jsonl({**p, "completion": "\t"}),
            "messages ending with the user": jsonl({"messages": [{"role": "user", "content": "Say hi."}]}),
            "a message with role bot": jsonl({"messages": [{"role": "user", "content": "Say hi."},
                                                           {"role": "bot", "content": "Hi."}]}),
        },
        "rm train": {
            "empty chosen": jsonl({**pair, "chosen": ""}),
            "rejected missing": jsonl({**p, "chosen": "Hi there."}),
            "chosen == rejected": jsonl({**pair, "rejected": "Hi there."}),
            "chosen == rejected up to spaces": jsonl({**pair, "rejected": " Hi there. "}),
            "chosen is a number": jsonl({**pair, "chosen": 1}),
            "margin NaN": jsonl({**pair, "margin": float("nan")}),
            "margin a string": jsonl({**pair, "margin": "2"}),
            "margin negative": jsonl({**pair, "margin": -1}),
            "margin 1e308": jsonl({**pair, "margin": 1e308}),
            "score NaN": jsonl({**rate[0], "score": float("nan")}, rate[1]),
            "score -Infinity": jsonl({**rate[0], "score": float("-inf")}, rate[1]),
            "score 1e400": jsonl('{"prompt": "Say hi.", "response": "Hi there.", "score": 1e400}', rate[1]),
            "score a bool": jsonl({**rate[0], "score": True}, rate[1]),
            "score a string": jsonl({**rate[0], "score": "6"}, rate[1]),
            "empty rated response": jsonl({**rate[0], "response": ""}, rate[1]),
            "ranking of empty tie groups": jsonl({**rank, "ranking": [[], []]}),
            "ranking index out of range": jsonl({**rank, "ranking": [0, 3]}),
            "ranking repeats an index": jsonl({**rank, "ranking": [0, [1, 0]]}),
            "ranking of one place": jsonl({**rank, "ranking": [[0, 1, 2]]}),
            "ranking index a float": jsonl({**rank, "ranking": [0.0, 1]}),
            "ranking of empty responses": jsonl({**p, "responses": ["", ""], "ranking": [0, 1]}),
            "ranking of equal responses": jsonl({**rank, "responses": ["Hi.", "Hi.", "Go."]}),
            "responses a string": jsonl({**rank, "responses": "Hi."}),
            "empty edit": jsonl({**p, "response": "Go away.", "edited": " "}),
            "only SFT records": jsonl({**p, "completion": "Hi."}),
            "only tied ratings": jsonl(rate[0], {**rate[1], "score": 6}),
        },
        "ppo": {
            "keywords a string": jsonl({**p, "keywords": "greeting"}),
            "keywords with a number": jsonl({**p, "keywords": ["hi", 2]}),
            "draft a number": jsonl({**p, "draft": 3}),
        },
        "eval": {
            "integer reference": jsonl({**p, "reference": 3}),
            "empty reference": jsonl({**p, "reference": ""}),
        },
        "feedback import": {
            "no responses": jsonl({**p, "responses": []}),
            "empty responses": jsonl({**p, "responses": ["", ""]}),
            "equal responses": jsonl({**p, "responses": ["Hi.", "Hi."]}),
            "equal responses on two lines": jsonl({**p, "response": "Hi."}, {**p, "response": "Hi."}),
            "responses missing": jsonl(p),
            "response null": jsonl({**p, "response": None}),
            "model a number": jsonl({**cand, "model": 1}),
            "gold ranking out of range": jsonl({**cand, "gold": {"ranking": [0, 2]}}),
            "gold ranking of empty groups": jsonl({**cand, "gold": {"ranking": [[], []]}}),
            "gold ratings out of 1..7": jsonl({**cand, "gold": {"ratings": [1, 8]}}),
            "gold field unknown": jsonl({**cand, "gold": {"best": 0}}),
        },
    }
    out = [Case(stage, name, content) for stage, faults in cases.items() for name, content in faults.items()]
    # The stages' other inputs: held-out data, gold answers, guidelines.
    out += [
        Case("sft", "eval_data empty", b"", arg="--set=eval_data={path}"),
        Case("rm train", "eval data with NaN margin", jsonl({**pair, "margin": float("nan")}), arg="--eval-data={path}"),
        # The review's repro: ratings regressed on z-scored scores, where NaN poisoned every weight and 1e308 overflowed.
        Case("rm train", "score NaN (regression)", jsonl({**rate[0], "score": float("nan")}, rate[1]), extra=regression),
        Case("rm train", "score 1e308 (regression)", jsonl({**rate[0], "score": 1e308}, rate[1]), extra=regression),
        Case("ppo", "eval_prompts with a lone surrogate", b'{"prompt": "Say \\udc80hi."}\n', arg="--set=eval_prompts={path}"),
        Case("eval", "sft-data empty", b"", arg="--sft-data={path}"),
        Case("eval", "sft-data completion a number", jsonl({**p, "completion": 5}), arg="--sft-data={path}"),
        Case("eval", "sft-data invalid UTF-8", b'{"prompt": "Say hi.", "completion": "\xe9"}\n', arg="--sft-data={path}"),
        Case("feedback import", "gold file without gold answers", jsonl(cand), arg="--gold={path}"),
        Case("feedback import", "guidelines not UTF-8", "Be kind.\nSé amable.\n".encode("latin-1"), arg="--guidelines={path}"),
        Case("feedback import", "guidelines missing", MISSING, arg="--guidelines={path}"),
        Case("feedback import", "guidelines a folder", FOLDER, arg="--guidelines={path}"),
    ]
    return out


def corpus() -> list[Case]:
    cases = [c for stage, s in STAGES.items() for c in shared_cases(stage, s.good)] + own_cases()
    return sorted(cases, key=lambda c: list(STAGES).index(c.stage))


def materialise(case: Case, path: Path) -> None:
    if case.content == FOLDER:
        path.mkdir()
    elif case.content != MISSING:
        path.write_bytes(case.content)


def command(case: Case, bad: Path, good: Path, out: Path) -> list[str]:
    stage = STAGES[case.stage]
    args = [a.replace("{out}", str(out)) for a in stage.args]
    main_input = f"{stage.flag}={good}" if case.arg else f"{stage.flag}={bad}"
    args.append(main_input)
    if case.arg:
        args.append(case.arg.replace("{path}", str(bad)))
    return [sys.executable, "-m", "rlhfkit", *args, *case.extra]


def classify(rc: int | None, output: str, bad: Path) -> tuple[str, str]:
    """(class, the line that shows it) of one run; rc None: still running at the timeout."""
    lines = [line for line in output.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in output:
        return "traceback", lines[-1] if lines else ""
    if rc is None or rc == 0:
        return "silent", "timed out (still running)" if rc is None else "exit 0"
    errors = [line for line in lines if line.startswith("error:")]
    shown = errors[-1] if errors else (lines[-1] if lines else f"exit {rc}, no output")
    if len(errors) == 1 and f"{bad}:" in errors[0]:
        return "clear", shown
    return "no-location", shown


def run(case: Case, root: Path, index: int, timeout: float) -> tuple[str, str]:
    work = root / f"{index:03d}"
    work.mkdir()
    bad = work / ("guidelines.md" if "guidelines" in case.arg else "input.jsonl")
    materialise(case, bad)
    good = work / "good.jsonl"
    good.write_text(json.dumps(STAGES[case.stage].good) + "\n", encoding="utf-8")
    (work / "out").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    try:
        proc = subprocess.run(command(case, bad, good, work / "out"), capture_output=True, text=True, errors="replace",
                              timeout=timeout, env=env, cwd=root)
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        return classify(None, output, bad)
    return classify(proc.returncode, proc.stdout + proc.stderr, bad)


def table(results: list[tuple[Case, str, str]]) -> str:
    rows = [("stage", "tried", *CLASSES)]
    for stage in [*STAGES, "total"]:
        mine = [cls for case, cls, _ in results if stage in ("total", case.stage)]
        if mine:
            rows.append((stage, str(len(mine)), *(str(mine.count(c)) for c in CLASSES)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=list(STAGES), help="Run only this stage's cases.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds per run before it counts as accepted.")
    parser.add_argument("--show-all", action="store_true", help="Print every case's error line, not only the unclear ones.")
    args = parser.parse_args()
    cases = [c for c in corpus() if args.stage in (None, c.stage)]
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="rlhf-bad-inputs-") as tmp:
        for i, case in enumerate(cases):
            cls, line = run(case, Path(tmp), i, args.timeout)
            results.append((case, cls, line))
            if args.show_all or cls != "clear":
                print(f"[{cls}] {case.stage} / {case.name}: {line.replace(tmp, '$TMP')}", flush=True)
    print(table(results))
    clear = sum(cls == "clear" for _, cls, _ in results)
    print(f"{clear}/{len(results)} clear ({100 * clear / len(results):.0f} %) in {time.perf_counter() - t0:.0f} s")
    return 0 if clear == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
