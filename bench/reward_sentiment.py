"""Reward model on the sentiment task: held-out accuracy against the GOLD (VADER) ordering.

Steps (each one is the CLI or the function behind it):
  1. candidates: `rlhf sample --model default --prompts src/rlhfkit/recipes/sentiment/prompts.jsonl --k 4
     --max-new-tokens 32 --temperature 1.0 --output bench/out/sentiment/candidates.jsonl` (run beforehand);
  2. simulated rankings: `rlhf feedback simulate --judge sentiment --kind rank` with noise (--temperature, --flip);
  3. `rlhf rm train` on the rankings (train/validation split by prompt), timed;
  4. accuracy of the trained model on the held-out prompts' candidate pairs whose gold scores differ.

Usage: .venv/bin/python bench/reward_sentiment.py --model minilm [--max-steps N] [--lr LR] [--lora]
Prints one JSON line with the figures; bench/RESULTS.md "## Reward model (sentiment)" records them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlhfkit.config import RewardConfig, SimulateConfig
from rlhfkit.data.formats import prompt_key, ranking_to_pairs, read_records
from rlhfkit.data.groups import gold_groups
from rlhfkit.feedback.simulate import simulate_feedback
from rlhfkit.judges import get_judge
from rlhfkit.stages.reward_model import score_groups, train_reward
from rlhfkit.tracking import read_metrics


def label_agreement(feedback: list[dict], candidates: list[dict]) -> float:
    """Share of the simulated rankings' pairs that agree with the gold order (strictly different gold only)."""
    judge = get_judge("sentiment")
    gold = {prompt_key(c): dict(zip(c["responses"], judge([c] * len(c["responses"]), c["responses"]))) for c in candidates}
    agree = total = 0
    for rec in feedback:
        g = gold[prompt_key(rec)]
        for p in ranking_to_pairs(rec):
            if g[p.chosen] != g[p.rejected]:
                total += 1
                agree += g[p.chosen] > g[p.rejected]
    return agree / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", default="bench/out/sentiment/candidates.jsonl")
    ap.add_argument("--out", default="bench/out/sentiment")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--pooling", default="cls", choices=["mean", "cls"], help="encoder pooling (RewardConfig.pooling)")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--trainable-layers", type=int, default=0, help="full training: top N layers + head (0: all)")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--name", default=None, help="run folder name under --out")
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.15, help="Bradley–Terry temperature (VADER units)")
    ap.add_argument("--flip", type=float, default=0.05, help="flip rate")
    ap.add_argument("--annotators", type=int, default=4)
    ap.add_argument("--per-prompt", type=int, default=1, help="annotators who rank each prompt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the annotators and of the train/held-out split")
    args = ap.parse_args()

    out = Path(args.out)
    candidates = read_records(args.candidates, "candidates")
    feedback_path = out / f"rank_T{args.temperature}_f{args.flip}_x{args.per_prompt}_s{args.seed}.jsonl"
    feedback = simulate_feedback(SimulateConfig(judge="sentiment", candidates=args.candidates, output=str(feedback_path),
                                                kind="rank", annotators=args.annotators, per_prompt=args.per_prompt, temperature=args.temperature,
                                                flip_rate=args.flip, bias_std=0.5, seed=args.seed))
    name = args.name or f"rm-{args.model}{'-lora' if args.lora else ''}"
    cfg = RewardConfig(model=args.model, data=str(feedback_path), output=str(out / name), max_steps=args.max_steps,
                       batch_size=args.batch_size, lr=args.lr, lora=args.lora, pooling=args.pooling, weight_decay=args.weight_decay, max_len=args.max_len, eval_fraction=0.2,
                       trainable_layers=args.trainable_layers, warmup_steps=10, eval_every=args.eval_every, save_every=50, report_to="none", threads=args.threads, seed=args.seed)
    t0 = time.perf_counter()
    last = train_reward(cfg)
    train_s = time.perf_counter() - t0
    metrics = read_metrics(out / name / "metrics.jsonl")
    step_s = sum(r["time_step_s"] for r in metrics)
    examples = sum(r["examples"] for r in metrics)

    held = {prompt_key(p) for p in json.loads((out / name / "split.json").read_text())["eval_prompts"]}
    held_candidates = [c for c in candidates if prompt_key(c) in held]
    gold = score_groups(out / name, gold_groups(held_candidates, get_judge("sentiment")), batch_size=32)
    print(json.dumps({
        "backbone": args.model, "seed": args.seed, "lora": args.lora, "trainable_layers": args.trainable_layers, "lr": args.lr, "pooling": args.pooling, "weight_decay": args.weight_decay, "prompts": len(candidates), "held_out_prompts": len(held_candidates),
        "noise": {"temperature": args.temperature, "flip_rate": args.flip, "annotators": args.annotators, "per_prompt": args.per_prompt, "bias_std": 0.5},
        "label_agreement_with_gold": round(label_agreement(feedback, candidates), 4),
        "gold_pairs": gold["n_pairs"], "gold_accuracy": round(gold["accuracy"], 4),
        "label_accuracy_held_out": round(last["eval_accuracy"], 4),
        "steps": args.max_steps, "train_wall_s": round(train_s, 1), "train_step_s": round(step_s, 1),
        "examples_per_s": round(examples / step_s, 1),
    }))


if __name__ == "__main__":
    main()
