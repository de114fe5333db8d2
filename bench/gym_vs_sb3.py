"""Gymnasium PPO vs Stable-Baselines3 on CartPole-v1: steps to 475, final return, wall-clock per 10k steps.

Needs Stable-Baselines3 (it installs nothing itself):  pip install -e ".[bench]"   (or pip install stable-baselines3)

    python bench/gym_vs_sb3.py [--seeds 0 1 2] [--total-steps 100000] [--eval-every 5000] [--eval-episodes 20]

For each seed it runs, one after the other in this process, SB3's PPO with the rl-zoo CartPole-v1
hyper-parameters, ours with the same hyper-parameters, and ours with its defaults (CleanRL's). Every run
is evaluated with the same routine (``rlhfkit.stages.gym_ppo.evaluate``: deterministic actions, the same
evaluation seeds) every ``--eval-every`` steps; evaluation time is excluded from the wall-clock. Torch
uses one thread in every run. Prints a Markdown table for bench/RESULTS.md and writes the raw numbers
as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlhfkit.config import GymConfig
from rlhfkit.stages.gym_ppo import EVAL_SEED, evaluate, train_gym
from rlhfkit.tracking import read_metrics

ENV = "CartPole-v1"
TARGET = 475.0
# rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1
ZOO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
           learning_rate=1e-3, clip_range=0.2)
# the same hyper-parameters in GymConfig terms. SB3 has no value clipping and its value loss is
# F.mse_loss (no ½), so vf_coef 1.0 here equals SB3's 0.5; SB3 also bootstraps time-limit truncations.
OURS_ZOO = dict(num_envs=8, num_steps=32, num_minibatches=1, gae_lambda=0.8, gamma=0.98, update_epochs=20,
                ent_coef=0.0, lr=1e-3, anneal_lr=True, clip_eps=0.2, anneal_clip=True, clip_vloss=False,
                vf_coef=1.0, bootstrap_truncated=True)


def run_sb3(seed: int, total: int, eval_every: int, episodes: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    def linear(v: float):
        return lambda progress_remaining: progress_remaining * v

    evals: list[tuple[int, float]] = []
    eval_time = [0.0]

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:  # i.e. right after the previous update, where ours evaluates
            n = self.num_timesteps
            if n and (n // eval_every > (n - ZOO["n_envs"] * ZOO["n_steps"]) // eval_every):
                t = time.perf_counter()
                policy = lambda obs: self.model.predict(obs, deterministic=True)[0]  # noqa: E731
                evals.append((n, float(np.mean(evaluate(policy, ENV, episodes, EVAL_SEED + seed)))))
                eval_time[0] += time.perf_counter() - t

    env = make_vec_env(ENV, n_envs=ZOO["n_envs"], seed=seed)
    model = PPO("MlpPolicy", env, n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"], gae_lambda=ZOO["gae_lambda"],
                gamma=ZOO["gamma"], n_epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"],
                learning_rate=linear(ZOO["learning_rate"]), clip_range=linear(ZOO["clip_range"]), seed=seed,
                device="cpu", verbose=0)
    start = time.perf_counter()
    model.learn(total, callback=Evaluate())
    train_time = time.perf_counter() - start - eval_time[0]
    policy = lambda obs: model.predict(obs, deterministic=True)[0]  # noqa: E731
    evals.append((model.num_timesteps, float(np.mean(evaluate(policy, ENV, episodes, EVAL_SEED + seed)))))
    return {"steps": model.num_timesteps, "train_s": train_time, "evals": evals}


def run_ours(seed: int, total: int, eval_every: int, episodes: int, overrides: dict, out: Path) -> dict:
    cfg = GymConfig(env_id=ENV, output=str(out), seed=seed, total_steps=total, eval_every=eval_every,
                    eval_episodes=episodes, report_to="none", save_every=0, **overrides)
    train_gym(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    last = rows[-1]
    evals = [(r["step"], r["eval_return"]) for r in rows if "eval_return" in r]
    return {"steps": last["step"], "train_s": last["step"] / last["sps"], "evals": evals}


def summarise(run: dict) -> dict:
    reached = next((step for step, ret in run["evals"] if ret >= TARGET), None)
    return {"steps_to_475": reached, "final_return": run["evals"][-1][1],
            "s_per_10k": run["train_s"] / run["steps"] * 10_000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--total-steps", type=int, default=100_000)
    ap.add_argument("--eval-every", type=int, default=5_000)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="Also write the raw numbers here.")
    args = ap.parse_args()
    torch.set_num_threads(1)

    variants = {"SB3 PPO (zoo hyper-parameters)": None, "ours (zoo hyper-parameters)": OURS_ZOO,
                "ours (defaults: CleanRL)": {}}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # alternate the libraries seed by seed so machine load affects both alike
            for name, overrides in variants.items():
                if overrides is None:
                    run = run_sb3(seed, args.total_steps, args.eval_every, args.eval_episodes)
                else:
                    run = run_ours(seed, args.total_steps, args.eval_every, args.eval_episodes, overrides,
                                   Path(tmp) / f"{len(results[name])}-{seed}")
                row = {"seed": seed, **summarise(run), "evals": run["evals"]}
                results[name].append(row)
                print(f"seed {seed}  {name}: steps to 475 {row['steps_to_475']}, final {row['final_return']:.1f}, "
                      f"{row['s_per_10k']:.2f} s / 10k steps", flush=True)

    sb3 = results["SB3 PPO (zoo hyper-parameters)"]
    sb3_s = statistics.mean(r["s_per_10k"] for r in sb3)
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.total_steps} env steps, evaluation "
          f"every {args.eval_every} steps over {args.eval_episodes} deterministic episodes\n")
    print("| run | steps to 475 (per seed) | final return (per seed) | s / 10k steps (mean) | time ratio ours/SB3 |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        s = statistics.mean(r["s_per_10k"] for r in rows)
        steps = ", ".join(str(r["steps_to_475"]) if r["steps_to_475"] is not None else "not reached" for r in rows)
        finals = ", ".join(f"{r['final_return']:.1f}" for r in rows)
        print(f"| {name} | {steps} | {finals} | {s:.2f} | {s / sb3_s:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
