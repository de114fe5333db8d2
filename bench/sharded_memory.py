"""Memory per process of PPO on the shipped model: one process, DDP, FSDP and DeepSpeed ZeRO-2/3 over two CPU processes (gloo).

One command (nothing else should run meanwhile):
  .venv/bin/python bench/sharded_memory.py [--steps 2] [--lora false] [--modes one,ddp,fsdp,deepspeed_zero2,deepspeed_zero3]
Each mode runs ``rlhf ppo`` on the shipped SmolLM2-135M (full fine-tuning by default; a value head; the length
judge as reward, so no reward model) for ``--steps`` updates of 4 prompts × 16 new tokens, fp32, one thread per
process. Every process writes its own peak resident memory (``ru_maxrss``, read at exit through
``RLHFKIT_PEAK_RSS_FILE``); the table gives the largest over the processes, rank 0's resident memory after its last
update (``rss_gb``: what the run holds, load-time peaks aside) and rank 0's seconds per update.
FSDP and ZeRO-3 shard the trained model, its gradients and AdamW's state over the processes (ZeRO-2: gradients and
AdamW's state); each process also keeps the whole model that samples the rollout (and the reference, under full
fine-tuning), so the saving is the gradients' and optimiser's share. Output: one JSON line on stdout and bench/out/sharded_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "src" / "rlhfkit" / "recipes" / "tutor" / "prompts.jsonl"

# Each process reports its own ru_maxrss through this hook: workers as their rank, a lone process (or the launcher) as 'alone'.
PEAK = "import atexit, os, resource; atexit.register(lambda: open(os.environ['RLHFKIT_PEAK_RSS_FILE'] + '.' + os.environ.get('RANK', 'alone'), 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))"


def ppo_args(out: Path, steps: int, lora: bool) -> list[str]:
    return ["ppo", "--policy", "default", "--reward", "judge:length", "--value-model", "head", "--prompts", str(PROMPTS),
            "--output", str(out), "--max-steps", str(steps), "--batch-size", "4", "--num-minibatches", "2",
            "--ppo-epochs", "1", "--max-new-tokens", "16", "--set", "report_to=none", "--set", "threads=1",
            "--set", f"lora={str(lora).lower()}", "--set", "save_every=0", "--set", "precision=fp32"]


def run_mode(mode: str, work: Path, steps: int, lora: bool) -> dict:
    out = work / mode
    peak = work / f"{mode}.peak"
    # freed memory handed back to the system (RLHFKIT_KEEP_FREED_MEMORY=0): resident memory then follows what the run
    # holds, not what the allocator kept from the gathers' buffers
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "RLHFKIT_PEAK_RSS_FILE": str(peak),
           "RLHFKIT_KEEP_FREED_MEMORY": os.environ.get("RLHFKIT_KEEP_FREED_MEMORY", "0"),
           "PYTHONPATH": str(work)}
    (work / "sitecustomize.py").write_text(f"import os\nif os.environ.get('RLHFKIT_PEAK_RSS_FILE'):\n    {PEAK}\n")
    program = ["-m", "rlhfkit", *ppo_args(out, steps, lora)]
    if mode == "one":
        cmd = [sys.executable, *program]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / f"{mode}.yaml"),
               "--num_processes", "2", "--mixed_precision", "no", *program]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    files = [work / f"{mode}.peak.alone"] if mode == "one" else sorted(work.glob(f"{mode}.peak.[0-9]*"))  # not the launcher
    peaks = [int(p.read_text()) / 2**20 for p in files]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"mode": mode, "processes": len(peaks), "peak_rss_gb_max": round(max(peaks), 3),
            "peak_rss_gb": [round(p, 3) for p in peaks], "rank0_rss_gb_after_last_update": round(log[-1]["rss_gb"], 3),
            "s_per_update": round(statistics.median(r["time_step_s"] for r in log), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--lora", default="false", choices=["true", "false"])
    ap.add_argument("--modes", default="one,ddp,fsdp,deepspeed_zero2,deepspeed_zero3",
                    help="one, or the names of configs/accelerate/*.yaml to launch with 2 processes")
    args = ap.parse_args()
    work = ROOT / "bench" / "out" / "sharded_memory"
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*.peak.*"):
        old.unlink()
    import accelerate
    import torch
    import transformers

    rows = [run_mode(m, work, args.steps, args.lora == "true") for m in args.modes.split(",")]
    result = {"machine": platform.processor() or platform.machine(), "nproc": os.cpu_count(), "torch": torch.__version__,
              "accelerate": accelerate.__version__, "transformers": transformers.__version__, "lora": args.lora == "true",
              "steps": args.steps, "rows": rows}
    (ROOT / "bench" / "out" / "sharded_memory.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
