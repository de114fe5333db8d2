"""Does a model's verdict depend on the student's answer? The tutor recipe's grading skill, measured without sampling.

For every grading prompt of the tutor recipe (prompts.jsonl and eval.jsonl: a question, the answer key, the
student's answer and the true verdict beside them), the model's log-probability of opening its reply with each
verdict ("Correct!", "Not quite.", "Partly right.") is computed with the chat template, as the policy would
start its answer. Reported:

  auc        how well log p("Correct!") − log p("Not quite.") separates right answers from wrong or partly right
             ones (0.5: the verdict ignores the student's answer; 1: it always ranks them right), with a
             95 % bootstrap interval over prompts
  argmax     the share of prompts whose most likely opening is the true verdict
  always     the share a grader that says "Correct!" to everyone gets (the majority class)

Online RL can sharpen a preference the policy already has; an AUC at 0.5 says there is none to sharpen.

    .venv/bin/python bench/verdict_signal.py MODEL [MODEL ...]     # a spec: default, a run's sft/merged, ...

One JSON line per model on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TUTOR = ROOT / "src" / "rlhfkit" / "recipes" / "tutor"
OPENINGS = {"correct": "Correct!", "incorrect": "Not quite.", "partly": "Partly right."}


def grading_prompts() -> list[dict]:
    rows = []
    for name in ("prompts.jsonl", "eval.jsonl"):
        for line in (TUTOR / name).read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "grading":
                rows.append(rec)
    return rows


def auc(pos: list[float], neg: list[float]) -> float:
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


@torch.inference_mode()
def opening_logprobs(spec: str, rows: list[dict]) -> list[dict]:
    from rlhfkit.data.tokenize import encode_prompt
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(spec), load_causal_lm(spec).eval()
    openings = {v: tok(text, add_special_tokens=False)["input_ids"] for v, text in OPENINGS.items()}
    out = []
    for rec in rows:
        prompt = encode_prompt(tok, [{"role": "user", "content": rec["prompt"]}], True)
        scores = {}
        for verdict, ids in openings.items():
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
            scores[verdict] = float(logits.gather(1, torch.tensor(ids)[:, None]).sum())
        out.append(scores)
    return out


def measure(spec: str, rows: list[dict], seed: int = 0, resamples: int = 2000) -> dict:
    scores = opening_logprobs(spec, rows)
    margin = [s["correct"] - s["incorrect"] for s in scores]
    truth = [r["verdict"] for r in rows]
    pos = [m for m, t in zip(margin, truth) if t == "correct"]
    neg = [m for m, t in zip(margin, truth) if t != "correct"]
    rng = random.Random(seed)
    boot = []
    for _ in range(resamples):
        idx = [rng.randrange(len(rows)) for _ in rows]
        p = [margin[i] for i in idx if truth[i] == "correct"]
        n = [margin[i] for i in idx if truth[i] != "correct"]
        if p and n:
            boot.append(auc(p, n))
    boot.sort()
    return {"model": spec, "prompts": len(rows), "auc": round(auc(pos, neg), 3),
            "auc_ci": [round(boot[int(0.025 * len(boot))], 3), round(boot[int(0.975 * len(boot)) - 1], 3)],
            "argmax": round(sum(max(s, key=s.get) == t for s, t in zip(scores, truth)) / len(rows), 3),
            "always": round(len(pos) / len(rows), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = grading_prompts()
    for spec in args.models:
        print(json.dumps(measure(spec, rows)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
