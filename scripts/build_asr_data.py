"""Build the asr recipe's data from scratch: sentences → speech (espeak-ng and Flite voices, varied rates, pitch and
noise) → PocketSphinx's 1-best and N-best → the recipe's JSONL files (text only) and a few clips.

  .venv/bin/python scripts/build_asr_data.py --out src/rlhfkit/recipes/asr [--n 2000] [--eval 100] [--sft 1600]
      [--keep-audio 6] [--seed 0] [--workers 2]

Needs Debian's espeak-ng, flite and sox and the PyPI package pocketsphinx (``pip install -e '.[speech]'``). Writes to
OUT: utterances.jsonl (every record: reference, 1-best, N-best with scores, voice, speaking rate, pitch, SNR), sft.jsonl
(prompt → completion: the reference, for SFT), prompts.jsonl (prompts for sampling, feedback and RL), eval.jsonl (held-out
utterances), audio/ (the first ``--keep-audio`` eval clips, for the feedback app and the tests) and build.json
(the counts, the seconds it took and the recogniser's WER). The split is by sentence: no sentence is in two files.
Each utterance draws its voice and noise from generators seeded by (``--seed``, its index), whatever ``--workers``
says. The audio is then the same; what the recogniser hears in it may not be: PocketSphinx carries its cepstral mean
from one utterance to the next within a process, and which utterances a worker decoded before one depends on the
workers' timing. ``--workers 1`` keeps that order (two such builds of six sentences wrote the same hypotheses,
their scores apart in the fourth digit); build.json records the number.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asr_sentences import sentences  # noqa: E402

from rlhfkit.data.speech import SpeechToolMissing, recipe_record, utterance  # noqa: E402
from rlhfkit.eval.metrics import error_rate, oracle_hypothesis, word_errors  # noqa: E402


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def one_utterance(job: tuple[int, str, str, int, Path | None]) -> dict:
    """Utterance ``i`` with its own generators, seeded by (seed, i): its voice and noise do not depend on the worker."""
    i, kind, text, seed, keep = job
    return utterance(f"u{i:04d}", kind, text, random.Random(f"{seed}-{i}"), np.random.default_rng([seed, i]), keep=keep)


def build(out: Path, n: int, n_eval: int, n_sft: int, keep_audio: int, seed: int, workers: int = 1) -> dict:
    if n_eval + n_sft >= n:
        raise SystemExit(f"--eval {n_eval} + --sft {n_sft} leave no prompts of --n {n}")
    out.mkdir(parents=True, exist_ok=True)
    said = sentences(n, seed)
    order = list(range(n))
    random.Random(seed + 1).shuffle(order)
    kept_ids = set(order[:max(0, min(keep_audio, n_eval))])
    jobs = [(i, kind, text, seed, out / "audio" if i in kept_ids else None) for i, (kind, text) in enumerate(said)]
    records, t0 = [], time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        for record in pool.imap(one_utterance, jobs, chunksize=4):
            records.append(record)
            if len(records) % 20 == 0 or len(records) == n:
                done = time.perf_counter() - t0
                print(f"{len(records)}/{n} utterances, {done:.0f} s, ~{done / len(records) * (n - len(records)):.0f} s "
                      f"to go", flush=True)
    seconds = time.perf_counter() - t0
    ev = [records[i] for i in order[:n_eval]]
    sft = [records[i] for i in order[n_eval:n_eval + n_sft]]
    rest = [records[i] for i in order[n_eval + n_sft:]]
    write_jsonl(out / "utterances.jsonl", records)
    write_jsonl(out / "eval.jsonl", [recipe_record(r) for r in ev])
    write_jsonl(out / "prompts.jsonl", [recipe_record(r) for r in rest])
    write_jsonl(out / "sft.jsonl", [{"prompt": recipe_record(r)["prompt"], "completion": r["reference"]} for r in sft])
    summary = {
        "utterances": n, "eval": len(ev), "sft": len(sft), "prompts": len(rest), "seed": seed, "workers": workers,
        "build_seconds": round(seconds, 1), "audio_seconds": round(sum(r["seconds"] for r in records), 1),
        "recogniser_one_best": error_rate([word_errors(r["reference"], r["one_best"]) for r in records]),
        "oracle_nbest": error_rate([word_errors(r["reference"], oracle_hypothesis(r)) for r in records]),
        "eval_one_best": error_rate([word_errors(r["reference"], r["one_best"]) for r in ev]),
        "eval_oracle_nbest": error_rate([word_errors(r["reference"], oracle_hypothesis(r)) for r in ev]),
    }
    (out / "build.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--sft", type=int, default=1600)
    ap.add_argument("--keep-audio", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=max(1, min(2, len(os.sched_getaffinity(0)))),
                    help="processes synthesising and recognising at once (default: 2, or 1 on one core)")
    a = ap.parse_args()
    if a.workers < 1:
        ap.error(f"--workers: expected 1 or more processes, got {a.workers}")
    try:
        s = build(a.out, a.n, a.eval, a.sft, a.keep_audio, a.seed, a.workers)
    except SpeechToolMissing as e:
        raise SystemExit(f"build_asr_data: {e}") from None
    print(f"{s['utterances']} utterances ({s['audio_seconds']:.0f} s of speech) in {s['build_seconds']:.0f} s; "
          f"recogniser WER {s['recogniser_one_best']['wer']:.3f}, oracle N-best {s['oracle_nbest']['wer']:.3f}")


if __name__ == "__main__":
    main()
