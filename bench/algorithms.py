"""PPO, GRPO, RLOO, REINFORCE++, DPO and best-of-N from the same SFT model and the same feedback, at the same
wall-clock budget each: which gives the better model here?

Input: a pipeline run folder (``rlhf pipeline --recipe NAME --output RUN``), whose SFT model (``sft/merged``),
reward model (``rm/``), simulated feedback (``feedback_all.jsonl``), training prompts (``prompts_train.jsonl``)
and PPO settings (``ppo/config.yaml``) every method shares (GRPO and RLOO compare a prompt's answers: where the
recipe samples one answer per prompt they take 4 per prompt in the same answers per update). Each method trains for ``--minutes`` (its own
process; the time a model takes to load is not counted, the training is), then one evaluation compares them
all with the SFT model on the recipe's held-out eval prompts: gold score, gold win rate vs SFT with its
interval, reward-model score, KL, and the SFT model's best-of-N answers (by the reward model) as a baseline.

The curve: during training every method answers the same held-out eval prompts (one answer each, a fixed seed,
the recipe's PPO length and temperature) before its first step and about ``--curve-points`` times more, and the
gold judge scores them (``eval/gold_score``: PPO's held-out evaluation, and DPO's ``eval_prompts``). These
evaluations are off the clock (``time_budget_counts_eval: false``), so every method gets the same training
seconds; the x axis is the training steps' own seconds. ``--plot OUT [OUT ...]`` draws several runs of the bench
(seeds, recipes) side by side into ``--figure``.

Usage:
  .venv/bin/python bench/algorithms.py --run runs/d0 --minutes 3 [--algos ppo,grpo,rloo,reinforce++,dpo]
      [--best-of 4] [--eval-prompts 24] [--curve-points 6] [--out bench/out/algorithms/d0] [--eval-only]
      [--step-seconds-from bench/out/algorithms/d0]
  .venv/bin/python bench/algorithms.py --plot OUT1 OUT2 --figure bench/figures/algorithms.png
Output: OUT/table.md, OUT/results.json and OUT/gold_vs_minutes.png; each method's run folder under OUT/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ONLINE = ("ppo", "grpo", "rloo", "reinforce++")


def step_seconds(run: Path, out: Path, earlier: Path | None = None) -> dict[str, float]:
    """Each method's seconds per training step, to space its curve's evaluations: measured by an earlier run of the
    bench (``earlier``, default ``out``: its trained.json, or for a method it did not finish, the mean step of its
    metrics.jsonl), else the pipeline run's PPO updates (every online method takes the same answers per update)
    and DPO at 0.4 of that (8 pairs, no sampling)."""
    rows = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = sorted(r["time_step_s"] for r in rows if "time_step_s" in r)
    update = times[len(times) // 2]  # the median update
    seconds = {**{algo: update for algo in ONLINE}, "dpo": 0.4 * update}
    src = earlier or out
    for algo in seconds:
        log = src / algo.replace("+", "p") / "metrics.jsonl"
        steps = [json.loads(line).get("time_step_s") for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
        steps = [t for t in steps if t]
        if steps:
            seconds[algo] = sum(steps) / len(steps)
    if (src / "trained.json").exists():
        seconds.update({t["algo"]: t["train_s"] / max(t["steps"], 1) for t in json.loads((src / "trained.json").read_text())})
    return seconds


def method_config(algo: str, run: Path, out: Path, minutes: float, seed: int, curve: dict) -> tuple[str, dict]:
    """(the rlhf command, its config) for one method, from the pipeline run's own settings; ``curve``: the held-out
    prompts, judge and evaluation interval of the gold curve."""
    ppo = yaml.safe_load((run / "ppo" / "config.yaml").read_text())
    if algo in ONLINE:
        cfg = dict(ppo)
        cfg.update(algo=algo, output=str(out), resume=False, max_steps=200, time_budget_minutes=minutes,
                   eval_prompts=curve["prompts"], eval_judge=curve["judge"], eval_every=curve["every"][algo],
                   time_budget_counts_eval=False, keep_snapshots=False, save_every=0, report_to="none", seed=seed)
        if algo != "ppo":
            cfg["value_model"] = "head"  # unused: critic-free
        if algo in ("grpo", "rloo") and cfg.get("samples_per_prompt", 1) < 2:
            cfg["samples_per_prompt"] = 4  # they compare a prompt's answers: the same answers per update, 4 per prompt
            cfg["batch_size"] = max(4, cfg.get("batch_size", 8) // 4 * 4)
        return "ppo", cfg
    if algo == "dpo":
        sft = yaml.safe_load((run / "sft" / "config.yaml").read_text())
        return "dpo", {"model": str(run / "sft" / "merged"), "data": str(run / "feedback_all.jsonl"), "output": str(out),
                       "max_steps": 400, "time_budget_minutes": minutes, "batch_size": 8, "grad_accum": 2, "lr": 1e-4, "warmup_steps": 1,
                       "beta": 0.1, "max_len": sft.get("max_len", 256), "eval_fraction": 0.05, "eval_every": curve["every"]["dpo"],
                       "eval_prompts": curve["prompts"], "eval_judge": curve["judge"], "eval_reward": str(run / "rm"),
                       "eval_max_new_tokens": ppo["max_new_tokens"], "eval_temperature": ppo["temperature"],
                       "time_budget_counts_eval": False, "save_every": 0, "report_to": "none",
                       "precision": sft.get("precision", "auto"), "seed": seed}
    raise SystemExit(f"--algos: unknown method {algo!r}")


def train(algo: str, run: Path, out: Path, minutes: float, seed: int, curve: dict) -> dict:
    """Train one method in its own process; its wall-clock, peak RSS, last metrics and gold curve."""
    command, cfg = method_config(algo, run, out, minutes, seed, curve)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out.parent / f"{out.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", command, "--config", str(cfg_file)], cwd=ROOT,
                            stdout=open(out.parent / f"{out.name}.log", "w"), stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{algo} failed: see {out.parent / f'{out.name}.log'}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_s = sum(r.get("time_step_s", 0.0) for r in rows)
    samples = sum(r.get("batch_size", 0) for r in rows)  # online: answers; DPO: pairs (its log's batch_size)
    return {"algo": algo, "steps": rows[-1]["step"] if rows else 0, "wall_s": wall, "train_s": train_s,
            "samples_per_s": (samples / train_s) if samples and train_s else None, "peak_rss_gib": usage.ru_maxrss / 2**20,
            "last": rows[-1] if rows else {}, "curve": gold_curve(rows)}


def gold_curve(rows: list[dict]) -> list[list[float]]:
    """[training seconds so far, held-out gold, its standard error] at each held-out evaluation (step 0 first)."""
    points, seconds = [], 0.0
    for r in rows:  # in step order; a row's time_step_s is its own step's, the evaluation after it is off the clock
        seconds += r.get("time_step_s", 0.0)
        if "eval/gold_score" in r:
            points.append([seconds, r["eval/gold_score"], r.get("eval/gold_se") or 0.0])
    return points


def plot(outs: list[Path], figure: Path) -> None:
    """Held-out gold against training minutes, every method of each bench run (a panel per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(outs), figsize=(5.2 * len(outs), 4.0), squeeze=False)
    for ax, out in zip(axes[0], outs):
        res = json.loads((out / "results.json").read_text())
        for t in res["trained"]:
            curve = t.get("curve") or []
            if curve:
                x, y, se = ([p[i] for p in curve] for i in range(3))
                line, = ax.plot([v / 60 for v in x], y, marker="o", markersize=3, label=t["algo"])
                ax.fill_between([v / 60 for v in x], [a - b for a, b in zip(y, se)], [a + b for a, b in zip(y, se)],
                                color=line.get_color(), alpha=0.12)
        models = {m["name"]: m for m in res["eval"]["models"]}
        start = next((t["curve"][0][1] for t in res["trained"] if t.get("curve")), None)
        for name in (n for n in models if n.startswith("best-of") and start is not None):
            # no training: the SFT level moved by best-of-N's gain over SFT in the final evaluation (its own answers)
            gain = models[name]["gold_score"] - models["sft"]["gold_score"]
            ax.axhline(start + gain, color="grey", linestyle=":", label=f"{name} by the RM: SFT + its final-eval gain")
        args = res["args"]
        ax.set_title(f"{res['recipe']}, seed {args['seed']}", fontsize=10)
        ax.set_xlabel("training minutes (held-out evaluations off the clock)")
        ax.set_ylabel(f"held-out gold ({res['judge']}), ± 1 s.e.")
        ax.legend(fontsize=7)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    print(f"figure: {figure}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a pipeline run folder")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall-clock per method")
    ap.add_argument("--algos", default="ppo,grpo,rloo,reinforce++,dpo")
    ap.add_argument("--best-of", type=int, default=4)
    ap.add_argument("--eval-prompts", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--step-seconds-from", default=None,
                    help="an earlier bench run's folder whose measured step times space the curve's evaluations")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the methods an earlier run of the bench trained")
    ap.add_argument("--curve-points", type=int, default=6, help="held-out gold evaluations per method after step 0")
    ap.add_argument("--plot", nargs="+", default=None, help="draw these runs of the bench (their OUT folders) and stop")
    ap.add_argument("--figure", default=None, help="where --plot writes its figure")
    args = ap.parse_args()
    if args.plot:
        return plot([Path(p).resolve() for p in args.plot], Path(args.figure or ROOT / "bench" / "figures" / "algorithms.png"))
    if not args.run:
        ap.error("--run is required")
    run = Path(args.run).resolve()
    out = Path(args.out or ROOT / "bench" / "out" / "algorithms" / run.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load((run / "config.yaml").read_text())["recipe"]
    eval_cfg = yaml.safe_load((run / "eval" / "config.yaml").read_text())
    # the curve's held-out prompts: the first --eval-prompts of the final evaluation's
    from rlhfkit.data.formats import read_records

    curve_prompts = out / "curve_prompts.jsonl"
    curve_prompts.write_text("".join(json.dumps(r) + "\n" for r in read_records(eval_cfg["prompts"], "prompt")[: args.eval_prompts]))
    per_step = step_seconds(run, out, Path(args.step_seconds_from) if args.step_seconds_from else None)
    every = {algo: max(1, round(60 * args.minutes / per_step[algo] / args.curve_points)) for algo in per_step}
    curve = {"prompts": str(curve_prompts), "judge": eval_cfg["judge"], "every": every}
    trained = json.loads((out / "trained.json").read_text()) if args.eval_only else []
    for algo in [] if args.eval_only else args.algos.split(","):
        print(f"{algo}: training for {args.minutes:g} min, held-out gold every {every[algo]} steps", flush=True)
        trained.append(train(algo, run, out / algo.replace("+", "p"), args.minutes, args.seed, curve))
        t = trained[-1]
        print(f"{algo}: {t['steps']} steps, {t['train_s']:.0f} s training, {t['wall_s']:.0f} s in all, "
              f"peak RSS {t['peak_rss_gib']:.2f} GiB", flush=True)
        (out / "trained.json").write_text(json.dumps(trained, default=str))  # --eval-only evaluates these again

    from rlhfkit.config import EvalConfig
    from rlhfkit.stages.evaluate import evaluate_models

    def final(t: dict) -> str:
        folder = out / t["algo"].replace("+", "p")
        return str(folder / "merged") if (folder / "merged").exists() else str(folder)

    cfg = EvalConfig(**{**{k: v for k, v in eval_cfg.items() if k in {f.name for f in dataclasses.fields(EvalConfig)}},
                        "models": [f"sft={run / 'sft' / 'merged'}"] + [f"{t['algo']}={final(t)}" for t in trained],
                        "reference": str(run / "sft" / "merged"), "reward": str(run / "rm"), "best_of": args.best_of,
                        "max_prompts": args.eval_prompts, "output": str(out / "eval"), "seed": args.seed})
    t0 = time.perf_counter()
    result = evaluate_models(cfg)
    print(f"eval: {time.perf_counter() - t0:.0f} s", flush=True)
    by_name = {m["name"]: m for m in result["models"]}
    lines = [f"Recipe {recipe}, run {run.name}, seed {args.seed}, {args.minutes:g} min of training each; "
             f"{result['n_prompts']} held-out prompts × {result['samples_per_prompt']} answers.", "",
             "| method | steps | gold | gold win rate vs SFT [95 % CI] | RM score | KL | grading acc. | samples/s (DPO: pairs/s) | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|---|---|"]

    def row(name: str, t: dict | None) -> str:
        m = by_name[name]
        win = m.get("win_rate_gold") or {}
        lo, hi = win.get("ci", [float("nan")] * 2)
        grading = (m.get("grading") or {}).get("accuracy")
        speed = "—" if not t or t["samples_per_s"] is None else f"{t['samples_per_s']:.2f}"
        rss = "—" if not t else f"{t['peak_rss_gib']:.2f}"
        return (f"| {name} | {t['steps'] if t else '—'} | {m.get('gold_score', float('nan')):.3f} | "
                f"{win.get('win_rate', float('nan')):.2f} [{lo:.2f}, {hi:.2f}] | {m.get('rm_score', float('nan')):.3f} | "
                f"{m.get('kl', float('nan')):.3f} | {'—' if grading is None else f'{grading:.2f}'} | {speed} | {rss} |")

    lines.append(row("sft", None))
    lines += [row(t["algo"], t) for t in trained]
    lines += [row(name, None) for name in by_name if name.startswith("best-of")]
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"recipe": recipe, "judge": eval_cfg["judge"], "trained": trained,
                                                  "eval": result, "args": vars(args)}, indent=1, default=str))
    plot([out], out / "gold_vs_minutes.png")


if __name__ == "__main__":
    main()
