"""Kill and resume: SFT, reward-model and PPO runs stopped at random points must end bit for bit as unbroken ones.

Each stage trains a tiny model through the real CLI, once unbroken, then again under each way of stopping:

- ``kill-9``: SIGKILL at a random moment of the run;
- ``kill-9-in-save``: SIGKILL while a checkpoint is being written (its ``checkpoint.tmp`` folder exists);
- ``ctrl-c``: SIGINT at a random moment (the run saves a checkpoint and exits; SFT and the reward model);

then ``--resume`` (again and again if the resumed run is stopped too) to the end. A case is exact when the
final weights are bit-for-bit the unbroken run's and every logged metric but the timings is equal. The table
counts the resumes that started from a checkpoint (a stop before the first save leaves none to resume from).

    python bench/review_resume.py                  # every stage, the default number of cases
    python bench/review_resume.py --stages sft --cases 3

Prints one table (cases / stops / resumes from a checkpoint / exact per stage and way of stopping) and exits
non-zero unless every case is exact.
Runs one process at a time (a 2-core machine); the default takes about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMING = {"time_step_s", "time_rollout_s", "time_train_s", "samples_per_s", "peak_rss_gb", "time_eval_s"}
WORDS = "apple banana cherry dragon eagle falcon grape harbor island jungle kettle lemon".split()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def stage_commands(stage: str, data: Path, out: Path) -> list[str]:
    """The CLI call of one stage's run (8 steps, a checkpoint every 2) into ``out``."""
    common = ["--output", str(out), "--report-to", "none", "--set", "threads=1", "--set", "save_every=2"]
    if stage == "sft":
        return ["sft", "--model", "tiny", "--data", str(data / "sft.jsonl"), "--max-steps", "8", "--batch-size", "4",
                "--set", "eval_fraction=0.25", "--set", "eval_every=3", *common]
    if stage == "rm":
        return ["rm", "train", "--model", "tiny-minilm", "--data", str(data / "pairs.jsonl"), "--max-steps", "8",
                "--batch-size", "4", "--set", "eval_every=3", "--set", "max_len=32", *common]
    return ["ppo", "--policy", "tiny", "--reward", "judge:length", "--prompts", str(data / "prompts.jsonl"),
            "--max-steps", "8", "--batch-size", "4", "--max-new-tokens", "8", "--ppo-epochs", "2", "--num-minibatches", "2",
            "--set", "temperature=0.7", "--set", "adaptive_kl=true", "--set", "missing_eos_penalty=-1", *common]


def make_data(folder: Path) -> Path:
    write_jsonl(folder / "sft.jsonl", [{"prompt": f"Say the secret word number {i}.", "completion": f"The word is {w}."}
                                      for i, w in enumerate(WORDS)])
    rng = random.Random(0)
    write_jsonl(folder / "pairs.jsonl", [{"prompt": f"Pick a word ({i}).", "chosen": f"{rng.choice(WORDS)} apple",
                                          "rejected": f"{rng.choice(WORDS)} lemon"} for i in range(32)])
    write_jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in ["Hi", "Why is the sky blue?", "Name a colour.",
                                                                   "Count to three.", "Say yes.", "A haiku, please."]])
    return folder


def final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(p for p in out.glob("*.safetensors"))
    return {f"{p.name}:{k}": t for p in files for k, t in load_file(p).items()}


def logged(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run(cmd: list[str], env: dict, stop=None) -> tuple[int, bool]:
    """Run the CLI; ``stop(proc)`` (if given) may signal it. Returns the exit code and whether it resumed from a checkpoint."""
    # SIGINT as a terminal sends it: a shell's background job would otherwise hand the run an ignored SIGINT
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if stop is not None:
            stop(proc)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode not in (0, -signal.SIGKILL, 130, 1, -signal.SIGINT):
        print(err.decode(errors="replace")[-2000:], file=sys.stderr)
    return proc.returncode, b": resumed from step" in err


def stopper(way: str, out: Path, at: float):
    """A function that stops a running process the given way: at ``at`` seconds, or during a checkpoint write."""
    def stop(proc):
        t0 = time.monotonic()
        while proc.poll() is None:
            tmp_exists = (out / "checkpoint.tmp").exists()
            if way == "kill-9-in-save" and tmp_exists:
                proc.send_signal(signal.SIGKILL)
                return
            if way != "kill-9-in-save" and time.monotonic() - t0 >= at:
                proc.send_signal(signal.SIGKILL if way == "kill-9" else signal.SIGINT)
                return
            time.sleep(0.005)
    return stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", nargs="+", default=["sft", "rm", "ppo"])
    ap.add_argument("--cases", type=int, default=3, help="cases per stage and way of stopping")
    ap.add_argument("--ways", nargs="+", default=["kill-9", "kill-9-in-save", "ctrl-c"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        for stage in args.stages:
            full = Path(tmp) / f"{stage}-full"
            t0 = time.monotonic()
            assert run(stage_commands(stage, data, full), env)[0] == 0, f"{stage}: the unbroken run failed"
            seconds = time.monotonic() - t0
            want_w, want_m = final_weights(full), logged(full)
            ways = [w for w in args.ways if w != "ctrl-c" or stage in ("sft", "rm")]  # PPO keeps its last checkpoint on Ctrl-C
            for way in ways:
                exact, stops, from_ckpt = 0, 0, 0
                for case in range(args.cases):
                    out = Path(tmp) / f"{stage}-{way}-{case}"
                    cmd = stage_commands(stage, data, out)
                    # the first stop at a random moment past start-up; resumes are stopped again half the time
                    code, _ = run(cmd, env, stopper(way, out, rng.uniform(0.3, 0.9) * seconds))
                    if code == 0:
                        print(f"{stage} {way} case {case}: the run ended before the stop came", file=sys.stderr)
                    stops += code != 0
                    for _ in range(10):
                        if code == 0:  # the run (or a resume) finished
                            break
                        again = rng.random() < 0.5
                        code, resumed = run(cmd + ["--resume"], env, stopper(way, out, rng.uniform(0.3, 0.9) * seconds) if again else None)
                        stops += code != 0
                        from_ckpt += resumed
                    got_w = final_weights(out)
                    same_w = got_w.keys() == want_w.keys() and all(got_w[k].equal(want_w[k]) for k in want_w)
                    same = same_w and logged(out) == want_m
                    exact += same
                    if not same:
                        got_m = logged(out)
                        diff = next(((a, b) for a, b in zip(want_m, got_m) if a != b), (len(want_m), len(got_m)))
                        print(f"{stage} {way} case {case}: weights {'equal' if same_w else 'DIFFER'}, "
                              f"metrics {'equal' if got_m == want_m else f'DIFFER, first: {diff}'}", file=sys.stderr)
                table.append((stage, way, args.cases, stops, from_ckpt, exact))
    print(f"{'stage':6} {'way of stopping':16} {'cases':>5} {'stops':>5} {'from a checkpoint':>17} {'exact resumes':>13}")
    for stage, way, n, stops, from_ckpt, exact in table:
        print(f"{stage:6} {way:16} {n:5d} {stops:5d} {from_ckpt:17d} {exact:13d}")
    total, exact = sum(r[2] for r in table), sum(r[5] for r in table)
    print(f"total: {total} cases, {sum(r[3] for r in table)} stops, {exact} exact resumes ({100 * exact / max(total, 1):.0f} %)")
    return 0 if exact == total else 1


if __name__ == "__main__":
    sys.exit(main())
