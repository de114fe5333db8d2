"""The learning tests' margins over seeds and CPU matmul routes: does every bar hold with room to spare?

Each learning test measures through a function of (folder, seed); this script calls those same functions
for seeds 0..N-1, the language-model ones under both CPU matmul routes (``RLHFKIT_CPU_MATMUL`` unset:
oneDNN where it runs; ``blas``: torch's default), each in a fresh process (the route is read once per
process). It prints one row per test and route: the bar, the worst and median measured value, and the
worst margin over the bar.

    python bench/learning_margins.py                      # every test, seeds 0-9 (about 30 min on 2 cores)
    python bench/learning_margins.py --tests banana --seeds 3

Exits non-zero when any seed misses its bar.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (import line, expression of the measured value given `folder` and `seed`, bar, whether the CPU
# matmul route applies: the gym agents are small MLPs that never take the language models' route)
TESTS = {
    "banana": ("from tests.ppo.test_trainer import rewarded_word_gain as f",
               "(lambda a, b: b - a)(*f(folder, seed))", 2.0, True,
               "PPO: bananas per answer, last 10 updates − first 10"),
    "sft": ("from tests.test_sft import memorisation_losses as f; from tests.conftest import write_jsonl",
            "(lambda a, b: 1 - b / a)(*f(memorise(folder), folder, seed))", 0.5, True,
            "SFT: share of the first loss gone after 40 steps"),
    "rm": ("from tests.test_reward import token_preference_accuracy as f",
           "f(folder, seed)", 0.95, True, "reward model: held-out pair accuracy"),
    "cartpole": ("from tests.rl.test_gym import cartpole_return as f",
                 "f(folder, seed)", 475.0, False, "CartPole: eval return after ≤ 100k steps"),
    "pendulum": ("from tests.rl.test_gym import pendulum_returns as f",
                 "f(folder, seed)[1]", -600.0, False, "Pendulum: eval return after 60k steps"),
}

MEMORISE = '''
def memorise(folder):
    words = ["apple", "banana", "cherry", "dragon", "eagle", "falcon", "grape", "harbor"]
    return write_jsonl(folder / "mem.jsonl", [
        {"prompt": f"Say the secret word number {i}.", "completion": f"The secret word number {i} is {w}."}
        for i, w in enumerate(words)])
'''


def measure(test: str, seed: int, route: str | None) -> float:
    imports, expr, *_ = TESTS[test]
    # the repository's tests/ as the package `tests` (a dependency installs a `tests` package of its own)
    package = f"import types; sys.modules['tests'] = types.ModuleType('tests'); sys.modules['tests'].__path__ = [{str(ROOT / 'tests')!r}]"
    code = "\n".join(["import json, sys", "from pathlib import Path", package, imports, MEMORISE,
                      f"folder = Path(sys.argv[1]); seed = {seed}", f"print(json.dumps({expr}))"])
    env = {k: v for k, v in os.environ.items() if k != "RLHFKIT_CPU_MATMUL"}
    env.update({"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if route:
        env["RLHFKIT_CPU_MATMUL"] = route
    with tempfile.TemporaryDirectory() as folder:
        res = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{test} seed {seed}: {res.stderr[-2000:]}")
    return float(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tests", nargs="+", default=list(TESTS), choices=list(TESTS))
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    rows, ok = [], True
    for test in args.tests:
        _, _, bar, routed, what = TESTS[test]
        for route in ([None, "blas"] if routed else [None]):
            values = []
            for seed in range(args.seeds):
                values.append(measure(test, seed, route))
                print(f"{test} route={route or 'default'} seed {seed}: {values[-1]:.4g}", file=sys.stderr, flush=True)
            worst = min(values)
            ok &= worst >= bar
            rows.append((test, "default (oneDNN where it runs)" if route is None and routed else route or "-", what, bar, worst,
                         statistics.median(values), values))
    print(f"| test | route | measured | bar | worst | median | worst − bar | seeds 0–{args.seeds - 1} |")
    print("|---|---|---|---|---|---|---|---|")
    for test, route, what, bar, worst, med, values in rows:
        print(f"| {test} | {route} | {what} | {bar:g} | {worst:.3g} | {med:.3g} | {worst - bar:+.3g} | "
              f"{' '.join(f'{v:.3g}' for v in values)} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
