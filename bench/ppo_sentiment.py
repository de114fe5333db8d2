"""PPO on the sentiment task: does the held-out GOLD (VADER) score rise, within a time budget, at bounded KL?

Set-up (issue 4, done-when): the default policy (SmolLM2-135M-Instruct) with LoRA, a learned reward model
(MiniLM, from bench/reward_sentiment.py, normalisation stats stored beside it), the recipe's prompts for
training and its 40 held-out eval prompts for the gold curve (sampled at the training temperature, with a
fixed seed, before training and every --eval-every updates).

Usage:
  .venv/bin/python bench/ppo_sentiment.py --reward bench/out/sentiment/rm-minilm [--budget-minutes 30]
Prints the curve (step, gold, proxy score, KL, s/update) and one JSON summary line; bench/RESULTS.md
"## PPO (sentiment)" records them. Equivalent CLI:
  rlhf ppo --policy default --reward RM --prompts src/rlhfkit/recipes/sentiment/prompts.jsonl --output OUT --lora
           --set eval_prompts=src/rlhfkit/recipes/sentiment/eval.jsonl --set eval_judge=sentiment ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rlhfkit.config import PPOConfig
from rlhfkit.stages.ppo import train_ppo
from rlhfkit.tracking import read_metrics

RECIPE = Path("src/rlhfkit/recipes/sentiment")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reward", required=True, help="reward-model folder (rlhf rm train output) or judge:NAME")
    ap.add_argument("--output", default="bench/out/ppo_sentiment")
    ap.add_argument("--budget-minutes", type=float, default=25.0, help="stop after the update that crosses this")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--num-minibatches", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = PPOConfig(policy="default", reward=args.reward, prompts=str(RECIPE / "prompts.jsonl"), output=args.output,
                    lora=True, max_steps=args.max_steps, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                    ppo_epochs=args.ppo_epochs, num_minibatches=args.num_minibatches, lr=args.lr, kl_coef=args.kl_coef,
                    # review continuations rarely finish within a few dozen tokens: a fixed −1 for "no EOS" would
                    # swamp the reward model's signal, so the penalty is off here
                    missing_eos_penalty=None, eval_prompts=str(RECIPE / "eval.jsonl"), eval_judge="sentiment",
                    eval_every=args.eval_every, save_every=args.eval_every, schedule="constant",
                    keep_snapshots=False,  # the curve is all this reads; 50 adapters would be ~1 GB
                    threads=args.threads, seed=args.seed, report_to="tensorboard",
                    time_budget_minutes=args.budget_minutes)
    t0 = time.perf_counter()
    train_ppo(cfg)
    wall = time.perf_counter() - t0
    log = read_metrics(Path(args.output) / "metrics.jsonl")
    steps = [r for r in log if "score" in r]
    evals = [r for r in log if "eval/gold_score" in r]
    print("| step | gold (held-out) | proxy score (held-out) | proxy score (batch) | KL | s/update |")
    print("|---|---|---|---|---|---|")
    by_step = {r["step"]: r for r in steps}
    for r in log:
        s = by_step.get(r["step"], {})
        gold = f"{r['eval/gold_score']:.3f}" if "eval/gold_score" in r else ""
        proxy = f"{r['eval/rm_score']:.3f}" if "eval/rm_score" in r else ""
        batch = f"{s['score']:.3f}" if s else ""
        kl = f"{s['kl']:.2f}" if s else ""
        sec = f"{s['time_step_s']:.0f}" if s else ""
        if "eval/gold_score" in r or s:
            print(f"| {r['step']} | {gold} | {proxy} | {batch} | {kl} | {sec} |")
    summary = {
        "updates": len(steps), "wall_minutes": round(wall / 60, 1),
        "gold_start": evals[0]["eval/gold_score"], "gold_end": evals[-1]["eval/gold_score"],
        "gold_rise": round(evals[-1]["eval/gold_score"] - evals[0]["eval/gold_score"], 3),
        "proxy_start": evals[0]["eval/rm_score"], "proxy_end": evals[-1]["eval/rm_score"],
        "kl_mean": round(statistics.mean(r["kl"] for r in steps), 3), "kl_max": round(max(r["kl"] for r in steps), 3),
        "s_per_update_median": round(statistics.median(r["time_step_s"] for r in steps[1:] or steps), 1),
        "s_rollout_median": round(statistics.median(r["time_rollout_s"] for r in steps), 1),
        "s_train_median": round(statistics.median(r["time_train_s"] for r in steps), 1),
        "peak_rss_gb": round(max(r["peak_rss_gb"] for r in steps), 2),
        "warnings": sorted({w.split(":")[0] for r in steps for w in r.get("warnings", [])}),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
