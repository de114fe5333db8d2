"""Our GRPO and RLOO against TRL's GRPOTrainer and RLOOTrainer, in one run, on the same sentiment work.

One command (creates the peer venv on first use, then runs ours and the peer's for each method in turn):
  .venv/bin/python bench/grpo_vs_trl.py --run RUN [--updates 8] [--eval-every 2] [--eval-answers 1] [--algos grpo,rloo]
      [--threads 2] [--out OUT] [--reuse]
(--reuse keeps OUT/results.json's other sides and runs only the named --algos × --sides again.)
RUN is a pipeline run on the sentiment recipe (``rlhf pipeline --recipe sentiment --output RUN``): both sides start
from its SFT model (``sft/merged``, SmolLM2-135M-Instruct tuned) and are rewarded by its reward model (``rm/``,
MiniLM, normalised by its ``reward_stats.json``). Output: bench/out/grpo_vs_trl/ (table.md, gold_vs_minutes.png,
results.json, logs).

The same work on both sides: the recipe's training prompts in the chat template, 8 prompts × 4 answers = 32
answers per update, at most 32 new tokens, temperature 1.0 (no top-k/top-p), LoRA r 16 / alpha 32 on every linear
of the attention and MLP, dropout off, fp32, one optimiser step per update (one epoch, one minibatch, so the
ratio is 1 and clipping never acts), lr 1e-4 constant, AdamW with eps 1e-8 and no weight decay (TRL's; runs before
this was matched used our 1e-5), gradient-norm clip 1.0, KL coefficient 0.05 against the
adapters-off reference. GRPO: group-normalised scores, the k3 KL as a loss term, token-level loss aggregation
(TRL's ``dapo``, our ``loss_agg: token``). RLOO: leave-one-out baseline, the k1 KL summed over the answer in its
reward, no advantage normalisation (TRL's default; ours set to match), the loss summed over an answer's tokens and
averaged over answers (TRL's sequence log-prob; our ``loss_agg: constant``, the same direction, scaled by 1 / 32,
which Adam does not see). No EOS penalty on either side (TRL has none).

Held-out gold: before training and every ``--eval-every`` updates, ``--eval-answers`` answers (default one) to each
of the recipe's 40 eval prompts (each prompt repeated in the list both sides answer: 4 answers give the mean a
standard error about half of one answer's) sampled at the training temperature from a fixed seed, scored by the recipe's gold judge (VADER); the
evaluations are off the clock on both sides. Reported: seconds per update (median after the first), samples/s,
peak RSS (each side's own process, os.wait4), gold before → after, and the training seconds our run took to
reach the peer's final gold gain (its first held-out evaluation at or above it) over the peer's training seconds.

One evaluator (``--common-answers``, default 4 answers a prompt; 0 skips it): each side's own evaluations start from
its own sampler's first draw, so the two sides' step-0 figures differ although both hold the same SFT model, and a
gain measured from a higher first draw is smaller. So both sides also save their LoRA adapters at each evaluation
(OUTPUT/snapshots/step-NNNN/), and after training one process scores the SFT model and every snapshot of both sides
with our held-out evaluation: the same prompts, answers and sampling seed for each, so step 0 is one figure and two
snapshots differ by their weights alone. Its table and plot are the comparison; the sides' own figures stay beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "src" / "rlhfkit" / "recipes" / "sentiment"
PEER_VENV = ROOT / "bench" / "out" / "trl-grpo-venv"
TRL_VERSION = "1.16.0"
SETTINGS = {"batch_size": 32, "samples_per_prompt": 4, "max_new_tokens": 32, "temperature": 1.0, "lr": 1e-4,
            "kl_coef": 0.05, "lora_r": 16, "lora_alpha": 32,
            "adam_eps": 1e-8}  # TRL's AdamW (transformers' adam_epsilon), our critic-free default


def ensure_peer_venv(venv: Path) -> Path:
    """The peer's venv, created on first use: torch 2.13.0 CPU first (so nothing pulls CUDA), then TRL."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import trl; assert trl.__version__ == {TRL_VERSION!r}; from trl import GRPOTrainer, RLOOTrainer"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating the peer venv in {venv} (torch 2.13.0 CPU, trl {TRL_VERSION})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + [f"trl=={TRL_VERSION}", "peft"], check=True)
    subprocess.run(check, check=True)
    return python


def texts(path: Path) -> list[str]:
    """The prompts as the peer's user messages: their non-system texts, as the reward model reads them."""
    from rlhfkit.data.formats import read_records
    from rlhfkit.models.reward import prompt_for_encoder

    return [prompt_for_encoder(r) for r in read_records(path, "prompt")]


def eval_prompts_file(out: Path, answers: int) -> Path:
    """The recipe's eval prompts, each ``answers`` times in a row: the held-out list both sides answer."""
    if answers == 1:
        return RECIPE / "eval.jsonl"
    lines = (RECIPE / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    path = out / f"eval_x{answers}.jsonl"
    path.write_text("".join(line + "\n" for line in lines if line.strip() for _ in range(answers)), encoding="utf-8")
    return path


def ours_config(algo: str, run: Path, output: str, updates: int, eval_every: int, threads: int, seed: int,
                eval_prompts: str = str(RECIPE / "eval.jsonl"), adam_eps: float | None = None,
                max_grad_norm: float | None = None):
    """Our trainer on the same work (module docstring)."""
    from rlhfkit.config import LORA_TARGETS, PPOConfig

    s = SETTINGS
    return PPOConfig(algo=algo, policy=str(run / "sft" / "merged"), reward=str(run / "rm"), prompts=str(RECIPE / "prompts.jsonl"),
                     output=output, value_model="head", lora=True, lora_r=s["lora_r"], lora_alpha=s["lora_alpha"],
                     lora_targets=list(LORA_TARGETS), max_steps=updates, batch_size=s["batch_size"],
                     samples_per_prompt=s["samples_per_prompt"], ppo_epochs=1, num_minibatches=1, grad_accum=1, lr=s["lr"],
                     schedule="constant", max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                     kl_coef=s["kl_coef"], adam_eps=s["adam_eps"] if adam_eps is None else adam_eps, missing_eos_penalty=None, whiten_advantages=False,  # GRPO never whitens; TRL RLOO neither
                     loss_agg="token" if algo == "grpo" else "constant", precision="fp32", threads=threads, seed=seed, save_every=0, report_to="none",
                     eval_prompts=eval_prompts, eval_judge="sentiment", eval_every=eval_every,
                     keep_snapshots=True, **({} if max_grad_norm is None else {"max_grad_norm": max_grad_norm}))


def ours_worker(job: dict, result: str) -> None:
    from rlhfkit.stages.ppo import train_ppo
    from rlhfkit.tracking import read_metrics

    cfg = ours_config(job["algo"], Path(job["run"]), job["output"], job["updates"], job["eval_every"], job["threads"], job["seed"],
                      job["eval_prompts"], job.get("adam_eps"), job.get("max_grad_norm"))
    train_ppo(cfg)
    rows = read_metrics(Path(cfg.output) / "metrics.jsonl")
    Path(result).write_text(json.dumps({
        "seconds": [r["time_step_s"] for r in rows if "time_step_s" in r],
        "gold": [(r["step"], r["eval/gold_score"]) for r in rows if "eval/gold_score" in r],
        "kl": [r["kl"] for r in rows if "kl" in r],
    }))


def snapshots(folder: Path) -> dict[int, Path]:
    """A side's saved adapters by update: OUTPUT/snapshots/step-NNNN/ (both sides write them at each evaluation)."""
    return {int(d.name.split("-")[1]): d for d in sorted((folder / "snapshots").glob("step-*"))}


def one_evaluator_worker(job: dict, result: str) -> None:
    """Every side's snapshots scored by one evaluator: ours (``eval/heldout.py``), the same prompts, answers and
    sampling seed for every checkpoint, so step 0 (the SFT model both sides start from) is one figure and two
    checkpoints' scores differ by their weights alone (common random numbers)."""
    import torch

    from rlhfkit.accel.runtime import set_threads
    from rlhfkit.data.formats import prompt_messages, read_records
    from rlhfkit.data.tokenize import encode_prompt
    from rlhfkit.eval.heldout import held_out_eval
    from rlhfkit.judges import get_judge
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.reward import load_reward

    set_threads(job["threads"])
    s, run = SETTINGS, Path(job["run"])
    tok = load_tokenizer(str(run / "sft" / "merged"))
    records = read_records(job["eval_prompts"], "prompt")
    prompts = [encode_prompt(tok, prompt_messages(r), True) for r in records]
    reward, judge = load_reward(str(run / "rm"), 32), get_judge("sentiment")
    score = lambda policy, reference: held_out_eval(policy, reference, tok, prompts, records, reward, judge, seed=job["seed"],
                                                     batch_size=s["batch_size"], max_new_tokens=s["max_new_tokens"],
                                                     temperature=s["temperature"], precision="fp32")
    base = load_causal_lm(str(run / "sft" / "merged"))
    t0 = time.perf_counter()
    start = score(base, base)
    print(f"step 0 (the SFT model): gold {start['eval/gold_score']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    out: dict = {}
    for algo, sides in job["sides"].items():
        for name, folder in sides.items():
            rows = [(0, start)]
            for step, path in snapshots(Path(folder)).items():
                with torch.no_grad():
                    rows.append((step, score(load_causal_lm(str(path)), None)))  # reference: the adapters off
                print(f"{algo} {name} step {step}: gold {rows[-1][1]['eval/gold_score']:.3f}", flush=True)
            out.setdefault(algo, {})[name] = [{"step": st, **{k.removeprefix("eval/"): v for k, v in m.items()}} for st, m in rows]
    Path(result).write_text(json.dumps(out))


def one_evaluator(run: Path, out: Path, results: dict, args) -> dict:
    """Run :func:`one_evaluator_worker` in its own process over every side in ``results``; {algo: {side: rows}}."""
    sides = {algo: {name: str(out / f"{name}-{algo}") for name in r if snapshots(out / f"{name}-{algo}")}
             for algo, r in results.items()}  # sides from runs before snapshots were kept have none: left out
    job = {"run": str(run), "sides": sides, "threads": args.threads, "seed": args.seed,
           "eval_prompts": str(eval_prompts_file(out, args.common_answers))}
    (out / "job-one-evaluator.json").write_text(json.dumps(job))
    result = out / "result-one-evaluator.json"
    run_process([sys.executable, str(Path(__file__).resolve()), "--one-evaluator", "--job", str(out / "job-one-evaluator.json"),
                 "--result", str(result)], out / "log-one-evaluator.txt")
    return json.loads(result.read_text())


def run_process(cmd: list[str], log: Path) -> float:
    """Run one side in its own process; its peak RSS in GiB."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed; see {log}")
    return usage.ru_maxrss / 2**20


def peer_side(python: Path, algo: str, run: Path, out: Path, args) -> dict:
    import yaml

    from rlhfkit.config import LORA_TARGETS
    from rlhfkit.judges import get_judge

    rm_cfg = yaml.safe_load((run / "rm" / "config.yaml").read_text()) or {}
    job = {"trainer": algo, "policy": str(run / "sft" / "merged"), "reward": str(run / "rm"),
           "reward_max_len": rm_cfg.get("max_len", 512), "prompts": texts(RECIPE / "prompts.jsonl"),
           "eval_prompts": texts(eval_prompts_file(out, args.eval_answers)), "updates": args.updates, "eval_every": args.eval_every,
           "threads": args.threads, "seed": args.seed, "output": str(out / f"peer-{algo}"),
           "settings": SETTINGS | {"lora_targets": list(LORA_TARGETS)}}
    (out / f"job-peer-{algo}.json").write_text(json.dumps(job))
    result = out / f"result-peer-{algo}.json"
    rss = run_process([str(python), str(ROOT / "bench" / "trl_grpo_worker.py"), "--job", str(out / f"job-peer-{algo}.json"),
                       "--result", str(result)], out / f"log-peer-{algo}.txt")
    res = json.loads(result.read_text())
    judge = get_judge("sentiment")
    held = [{"prompt": p} for p in job["eval_prompts"]]
    res["gold"] = [(a["step"], statistics.mean(judge(held, a["responses"]))) for a in res.pop("answers")]
    return res | {"peak_rss_gib": rss}


def ours_side(algo: str, run: Path, out: Path, args) -> dict:
    job = {"algo": algo, "run": str(run), "output": str(out / f"ours-{algo}"), "updates": args.updates,
           "eval_every": args.eval_every, "threads": args.threads, "seed": args.seed,
           "eval_prompts": str(eval_prompts_file(out, args.eval_answers)), "adam_eps": args.adam_eps,
           "max_grad_norm": args.max_grad_norm}
    (out / f"job-ours-{algo}.json").write_text(json.dumps(job))
    result = out / f"result-ours-{algo}.json"
    rss = run_process([sys.executable, str(Path(__file__).resolve()), "--worker", "--job", str(out / f"job-ours-{algo}.json"),
                       "--result", str(result)], out / f"log-ours-{algo}.txt")
    return json.loads(result.read_text()) | {"peak_rss_gib": rss}


def to_reach(side: dict, gain: float) -> float | None:
    """Training seconds until the first held-out evaluation whose gold gain is at least ``gain`` (None: never)."""
    gold0 = side["gold"][0][1]
    for step, gold in side["gold"]:
        if gold - gold0 >= gain:
            return sum(side["seconds"][:step])
    return None


def table(results: dict) -> str:
    lines = ["| method | side | updates | s / update (median) | samples / s | peak RSS (GiB) | held-out gold: before → after "
             "(gain) | training s | s / update ours/peer | training s to the peer's final gain, ours/peer |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for algo, sides in results.items():
        peer = sides.get("peer")
        peer_gain = peer["gold"][-1][1] - peer["gold"][0][1] if peer else None
        for name, r in sides.items():
            med = statistics.median(r["seconds"][1:] or r["seconds"])
            g0, g1 = r["gold"][0][1], r["gold"][-1][1]
            ratio, reach = "—", "—"
            if peer and name == "ours":
                ratio = f"{med / statistics.median(peer['seconds'][1:] or peer['seconds']):.2f}"
                if peer_gain is not None and peer_gain > 0:
                    t = to_reach(r, peer_gain)
                    reach = (f"{t / sum(peer['seconds']):.2f} ({t:.0f} s / {sum(peer['seconds']):.0f} s)" if t is not None
                             else "not reached")
                else:
                    reach = f"peer gained nothing ({peer_gain:+.3f})"
            label = f"TRL {r.get('trl', '')}" if name == "peer" else "rlhfkit"
            lines.append(f"| {algo} | {label} | {len(r['seconds'])} | {med:.1f} | {SETTINGS['batch_size'] / med:.2f} | "
                         f"{r['peak_rss_gib']:.2f} | {g0:.3f} → {g1:.3f} ({g1 - g0:+.3f}) | {sum(r['seconds']):.0f} | "
                         f"{ratio} | {reach} |")
    return "\n".join(lines)


def one_evaluator_table(results: dict, scored: dict) -> str:
    """The same runs by the one evaluator: each side's gold at every snapshot, and the training seconds ours took
    to reach the peer's final gain (both gains now from the same step-0 figure)."""
    lines = ["| method | side | held-out gold at each evaluation (update: gold ± se) | gain | training s to the peer's "
             "final gain, ours/peer |", "|---|---|---|---|---|"]
    for algo, sides in scored.items():
        peer = sides.get("peer")
        peer_gain = peer[-1]["gold_score"] - peer[0]["gold_score"] if peer else None
        for name, rows in sides.items():
            side = results[algo][name] | {"gold": [(r["step"], r["gold_score"]) for r in rows]}
            reach = "—"
            if name == "ours" and peer_gain is not None:
                t, peer_s = to_reach(side, peer_gain), sum(results[algo]["peer"]["seconds"])
                reach = (f"peer gained nothing ({peer_gain:+.3f})" if peer_gain <= 0 else
                         f"{t / peer_s:.2f} ({t:.0f} s / {peer_s:.0f} s)" if t is not None else "not reached")
            curve = ", ".join(f"{r['step']}: {r['gold_score']:.3f} ± {r['gold_se']:.3f}" for r in rows)
            label = f"TRL {results[algo][name].get('trl', '')}" if name == "peer" else "rlhfkit"
            lines.append(f"| {algo} | {label} | {curve} | {rows[-1]['gold_score'] - rows[0]['gold_score']:+.3f} | {reach} |")
    return "\n".join(lines)


def plot(results: dict, path: Path, scored: dict | None = None) -> None:
    """Held-out gold against cumulative training minutes, every run of the bench on one axis (the one evaluator's
    figures where it ran, each side's own otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for algo, sides in results.items():
        for name, r in sides.items():
            gold = ([(row["step"], row["gold_score"]) for row in scored[algo][name]] if scored else r["gold"])
            minutes = [sum(r["seconds"][:step]) / 60 for step, _ in gold]
            label = f"{algo}, {'TRL ' + r.get('trl', '') if name == 'peer' else 'rlhfkit'}"
            ax.plot(minutes, [g for _, g in gold], marker="o", linestyle="--" if name == "peer" else "-", label=label)
    ax.set_xlabel("training minutes (held-out evaluations off the clock)")
    ax.set_ylabel(f"held-out gold (VADER), {'one evaluator' if scored else 'each side its own'}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a pipeline run folder on the sentiment recipe")
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-answers", type=int, default=1, help="answers to each held-out prompt at each evaluation")
    ap.add_argument("--algos", default="grpo,rloo")
    ap.add_argument("--sides", default="ours,peer")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same on both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adam-eps", type=float, default=None,
                    help="our side's Adam epsilon (default: SETTINGS', TRL's 1e-8); the peer's stays TRL's")
    ap.add_argument("--max-grad-norm", type=float, default=None,
                    help="our side's gradient-norm clip (default: our 1.0, as TRL's); RLOO's loss is TRL's ÷ 32, so "
                         "1/32 = 0.03125 clips our gradients where TRL's clip of 1 clips its own")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "grpo_vs_trl"))
    ap.add_argument("--reuse", action="store_true",
                    help="keep OUT/results.json's sides and run only --algos × --sides again (e.g. a side a busy machine slowed)")
    ap.add_argument("--common-answers", type=int, default=4,
                    help="answers to each held-out prompt when one evaluator scores both sides' snapshots afterwards "
                         "(0: skip it)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one-evaluator", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return ours_worker(json.loads(Path(args.job).read_text()), args.result)
    if args.one_evaluator:
        return one_evaluator_worker(json.loads(Path(args.job).read_text()), args.result)
    if not args.run:
        ap.error("--run is required")
    run, out = Path(args.run).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sides = args.sides.split(",")
    python = ensure_peer_venv(PEER_VENV) if "peer" in sides else None
    results: dict = json.loads((out / "results.json").read_text())["results"] if args.reuse else {}
    t0 = time.perf_counter()
    for algo in args.algos.split(","):
        for name in sides:
            r = ours_side(algo, run, out, args) if name == "ours" else peer_side(python, algo, run, out, args)
            results.setdefault(algo, {})[name] = r
            print(f"  {algo} {name}: s/update {[round(x, 1) for x in r['seconds']]}, gold "
                  f"{[(s, round(g, 3)) for s, g in r['gold']]}, peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    text = table(results)
    scored = one_evaluator(run, out, results, args) if args.common_answers > 0 else None
    if scored:
        text += ("\n\nOne evaluator (ours) over both sides' snapshots, "
                 f"{args.common_answers} answers to each held-out prompt, sampling seed {args.seed}:\n\n"
                 + one_evaluator_table(results, scored))
    print(text)
    (out / "table.md").write_text(text + "\n")
    plot(results, out / "gold_vs_minutes.png", scored)
    (out / "results.json").write_text(json.dumps({"results": results, "one_evaluator": scored, "settings": SETTINGS,
                                                  "updates": args.updates,
                                                  "ours_adam_eps": SETTINGS["adam_eps"] if args.adam_eps is None else args.adam_eps,
                                                  "ours_max_grad_norm": args.max_grad_norm,
                                                  "wall_s": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
