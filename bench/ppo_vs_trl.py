"""PPO speed and memory vs TRL 1.12.0's PPOTrainer, in one run, alternating, on the same work.

One command (creates the peer venv on first use, then measures both sides and writes the table):
  .venv/bin/python bench/ppo_vs_trl.py --threads 2   (the RESULTS.md runs; defaults --updates 3 --rounds 2 --threads 1)
Options: --updates N (per side per configuration; the median skips the first), --rounds R (each round runs
ours-A, peer-A, ours-B in turn), --threads T (torch threads, both sides; 1 because on the shared 2 cores two
OpenMP threads stall), --generate (our sampler vs model.generate, tokens/s at batch 8).
Output: bench/out/ppo_vs_trl/ (table.md, results.json, per-process logs).

The peer venv (bench/out/trl-venv): torch 2.13.0 CPU first (the wheel on this disk), then trl==1.12.0
with transformers 5.x. Every job runs in its own process; its peak RSS is that process's ru_maxrss
(os.wait4), so the two sides never share an allocator.

Configurations:
  A  same work as the peer: SmolLM2-135M-Instruct as policy, reference, reward and value model (reward and
     value: 1-label sequence classifiers from the same folder), full fine-tuning, fp32, batch 8,
     32 new tokens, 4 PPO epochs, 1 minibatch, temperature 0.7.
  B  our default recipe: LoRA policy, reference = adapters off, the MiniLM reward model; the value model
     then falls back to a value head on the policy (MiniLM's tokenizer differs from the policy's, and
     values are needed per policy token). Same batch, lengths and epochs; 2 minibatches (our default).
  Bbf16  B with ``precision: bf16`` (bf16 autocast matmuls, fp32 weights and optimiser; an option, not the default).
  Brecipe  B as the tutor recipe's PPO section runs it (recipes/tutor/recipe.yaml, ``ppo:``): 32 answers per
     update as 8 prompts × 4 (leave-one-out baseline), 1 epoch, 2 minibatches of 2 micro-batches, lr 3e-4,
     bf16 where the CPU has it. Only the lengths and sampling (32 new tokens, temperature 0.7), the start (the shipped model,
     not an SFT run) and the step count are the peer's.
The peer has no MiniLM route (its reward and value models must share the policy's tokenizer), so B is
compared with the peer's A: the same learning problem done the peer's way.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "ppo_vs_trl"
PEER_VENV = ROOT / "bench" / "out" / "trl-venv"
PROMPTS = ROOT / "src" / "rlhfkit" / "recipes" / "tutor" / "prompts.jsonl"
SETTINGS = {"batch_size": 8, "max_new_tokens": 32, "ppo_epochs": 4, "temperature": 0.7, "threads": 1, "seed": 0}


# ------------------------------------------------------------------------------------------------ set-up


def ensure_peer_venv(venv: Path) -> Path:
    """The peer's venv, created on first use; returns its python."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import trl.experimental.ppo"], capture_output=True).returncode == 0:
        return python
    print(f"creating the peer venv in {venv} (torch 2.13.0 CPU, trl 1.12.0, transformers 5.x)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # first: the CPU wheel, so nothing pulls CUDA
    subprocess.run(pip + ["trl==1.12.0", "transformers>=5,<6"], check=True)
    return python


def prepare(out: Path) -> dict:
    """Reward-model folders (SmolLM2 and MiniLM classifiers, seeded score heads) and the prompt ids."""
    import torch

    from rlhfkit.data.formats import prompt_messages, read_records
    from rlhfkit.data.tokenize import encode_prompt
    from rlhfkit.models.loading import default_model_dir, load_sequence_classifier, load_tokenizer

    folders = {}
    for name, spec in (("rm-smollm2", "default"), ("rm-minilm", "minilm")):
        folder = out / name
        if not (folder / "config.json").exists():
            torch.manual_seed(0)
            load_sequence_classifier(spec).save_pretrained(folder)
            load_tokenizer(spec).save_pretrained(folder)
        folders[name] = str(folder)
    tok = load_tokenizer("default")
    records = read_records(PROMPTS, "prompt")
    prompt_ids = [encode_prompt(tok, prompt_messages(r), True)[-256:] for r in records]
    return {"policy": str(default_model_dir()), **folders, "prompt_ids": prompt_ids}


def ours_config(name: str, paths: dict, updates: int, output: str):
    from rlhfkit.config import PPOConfig

    s = SETTINGS
    common = dict(policy="default", prompts=str(PROMPTS), output=output, max_steps=updates, batch_size=s["batch_size"],
                  max_new_tokens=s["max_new_tokens"], ppo_epochs=s["ppo_epochs"], temperature=s["temperature"],
                  threads=s["threads"], seed=s["seed"], save_every=0, report_to="none", schedule="constant")
    if name == "A":
        return PPOConfig(reward=paths["rm-smollm2"], lora=False, value_model="reward", num_minibatches=1, **common)
    if name == "Brecipe":
        from rlhfkit.stages.pipeline import load_recipe

        recipe = load_recipe("tutor").ppo
        keep = {k: recipe[k] for k in ("lora", "batch_size", "samples_per_prompt", "num_minibatches", "grad_accum", "ppo_epochs",
                                       "lr", "missing_eos_penalty", "precision")}
        return PPOConfig(reward=paths["rm-minilm"], value_model="reward", **(common | keep))
    precision = "bf16" if name == "Bbf16" else "fp32"
    return PPOConfig(reward=paths["rm-minilm"], lora=True, value_model="reward", num_minibatches=2, precision=precision, **common)


# ------------------------------------------------------------------------------------------------ workers


def ours_worker(job: dict, result: str) -> None:
    """Our trainer for ``updates`` steps; checkpoint writing is switched off (the bench measures updates)."""
    import rlhfkit.stages.ppo as trainer
    from rlhfkit.accel.precision import resolve_precision
    from rlhfkit.tracking import read_metrics

    trainer.Run.save_checkpoint = lambda *a, **k: None
    trainer.save_final = lambda *a, **k: None
    phases = instrument()
    SETTINGS.update({k: job[k] for k in SETTINGS})
    cfg = ours_config(job["config"], job["paths"], job["updates"], job["output"])
    trainer.train_ppo(cfg)
    log = read_metrics(Path(cfg.output) / "metrics.jsonl")
    Path(result).write_text(json.dumps({
        "seconds": [m["time_step_s"] for m in log],
        "tokens": [m["response_len"] * m["batch_size"] for m in log],
        "batch_size": cfg.batch_size,
        "ppo_epochs": cfg.ppo_epochs,
        "precision": resolve_precision(cfg.precision, "cpu"),
        "score": [m["score"] for m in log],
        "phases": phases,
    }))


def run_job(cmd: list[str], log: Path) -> dict:
    """Run one side in its own process; returns its result plus its own peak RSS (GiB)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return {"peak_rss_gib": usage.ru_maxrss / 2**20}


def side(kind: str, config: str, paths: dict, updates: int, tag: str, peer_python: Path) -> dict:
    job = {"config": config, "paths": {k: v for k, v in paths.items() if k != "prompt_ids"}, "updates": updates,
           "output": str(OUT / f"run-{tag}"), **SETTINGS}
    result = OUT / f"result-{tag}.json"
    if kind == "peer":
        job.update(policy=paths["policy"], reward=paths["rm-smollm2"], prompt_ids=paths["prompt_ids"], num_minibatches=1)
        cmd = [str(peer_python), str(ROOT / "bench" / "trl_ppo_worker.py")]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    job_file = OUT / f"job-{tag}.json"
    job_file.write_text(json.dumps(job))
    t0 = time.perf_counter()
    usage = run_job(cmd + ["--job", str(job_file), "--result", str(result)], OUT / f"log-{tag}.txt")
    out = json.loads(result.read_text()) | usage
    out["wall_s"] = time.perf_counter() - t0
    print(f"  {tag}: s/update {[round(x, 2) for x in out['seconds']]}, peak RSS {out['peak_rss_gib']:.2f} GiB, "
          f"process {out['wall_s']:.0f} s", flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    """Median seconds per update over every run's updates after its first; tokens and RSS alike."""
    secs = [s for r in runs for s in r["seconds"][1:]]
    toks = [t / s for r in runs for t, s in zip(r["tokens"][1:], r["seconds"][1:])]
    batch = runs[0]["batch_size"]
    med = statistics.median(secs)
    return {"s_per_update": med, "samples_per_s": batch / med, "tokens_per_s": statistics.median(toks),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs), "n": len(secs)}


def table(rows: dict[str, dict], peer_key: str = "peer A") -> str:
    peer = rows.get(peer_key)  # None when the run left the peer out: no ratios
    lines = ["| run | s / update (median) | samples / s | generated tokens / s | peak RSS (GiB) | "
             "s / update ours/peer | samples/s ours/peer | peak RSS ours/peer |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = "— | — | —" if peer is None or name == peer_key else (f"{r['s_per_update'] / peer['s_per_update']:.2f} | "
                                             f"{r['samples_per_s'] / peer['samples_per_s']:.2f} | "
                                             f"{r['peak_rss_gib'] / peer['peak_rss_gib']:.2f}")
        if name == peer_key:
            ratio = "1.00 | 1.00 | 1.00"
        lines.append(f"| {name} | {r['s_per_update']:.2f} | {r['samples_per_s']:.3f} | {r['tokens_per_s']:.1f} | "
                     f"{r['peak_rss_gib']:.2f} | {ratio} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ FLOPs


def lm_forward_flops(config, tokens: int, ctx: float, logit_rows: int) -> float:
    """Forward FLOPs of a decoder: 2·(linear params) per token, attention 4·ctx·d per token per layer, lm_head rows."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    return 2 * linear * tokens + 4 * layers * h * ctx * tokens + 2 * config.vocab_size * h * logit_rows


def update_flops(config, batch: int, prompt: int, response: int, epochs: int, lora: bool, peer: bool) -> dict:
    """FLOPs of one PPO update by phase (A: four SmolLM2 models; B: LoRA policy + value head, MiniLM ignored)."""
    t = batch * (prompt + response)
    ctx = (prompt + response) / 2
    logits_train = t if peer else batch * response  # the peer makes logits for every position
    gen = lm_forward_flops(config, t, ctx, batch * response)
    ref = lm_forward_flops(config, t, ctx, logits_train)
    backbone = lm_forward_flops(config, t, ctx, 0)
    out = {"generation": gen, "reference": ref}
    if not lora:
        out.update(value=backbone, reward=backbone)
        out["training"] = epochs * 3 * (lm_forward_flops(config, t, ctx, logits_train) + backbone)  # fwd + 2× bwd
    else:
        out["training"] = epochs * 2 * lm_forward_flops(config, t, ctx, logits_train)  # fwd + input-grad bwd
    out["total"] = sum(out.values())
    return out


# ------------------------------------------------------------------------------------------------ profile


def instrument() -> list[dict]:
    """Time each phase of our update by wrapping the functions the trainer calls; returns the per-update list.

    generation = rollout.sample; reference pass = rollout.forward_tokens: the reference's log-probs, and under
    bf16 also the policy's own (recomputed in one full pass so the PPO ratio starts at 1);
    value pass = ValueModel.forward under inference mode; reward pass = ModelReward.score (decode,
    re-tokenise, score); training = trainer.optimise (4 epochs, backward, optimiser steps).
    """
    import torch

    import rlhfkit.models.rollout as rollout
    import rlhfkit.stages.ppo as trainer
    from rlhfkit.models.reward import ModelReward
    from rlhfkit.models.value import ValueModel

    steps: list[dict] = []
    current: dict = {}

    def timed(name, fn, when=lambda: True):
        def wrapper(*a, **k):
            if not when():
                return fn(*a, **k)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            current[name] = current.get(name, 0.0) + time.perf_counter() - t0
            if name == "generation":
                current["prompt_width"], current["response_width"] = a[1].shape[1], out["response"].shape[1]
            if name == "training":
                steps.append(dict(current))
                current.clear()
            return out
        return wrapper

    rollout.sample = timed("generation", rollout.sample)
    rollout.forward_tokens = timed("reference pass", rollout.forward_tokens)
    ValueModel.forward = timed("value pass", ValueModel.forward, torch.is_inference_mode_enabled)
    ModelReward.score = timed("reward pass", ModelReward.score)
    trainer.optimise = timed("training", trainer.optimise)
    return steps


PHASES = ["generation", "reference pass", "value pass", "reward pass", "training"]


def has_bf16_instructions() -> bool:
    """Whether the CPU's flags name bf16 instructions (AVX-512 bf16 or AMX)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def measure_roofline(threads: int, bf16: bool | None = None) -> dict[str, float]:
    """This machine's best matmul rates (FLOP/s; 2048² products, best of 10) in fp32 through oneDNN, fp32
    through torch's default BLAS route (MKL) and, where the CPU has bf16 instructions (``bf16`` None: its flags
    say), bf16: the rooflines the profile compares with.

    Measured, not assumed: on the 2-core VMs this bench ran on, fp32 ranged 200-460 GFLOP/s by processor
    (MKL runs its AVX2 code on AMD processors, oneDNN AVX-512). Taken before and after the runs (the better
    of the two is used).
    """
    import torch

    from rlhfkit.accel.cpu_linear import onednn_linear_available, onednn_mm

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)

    def rate(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(10):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return 2 * 2048**3 / best

    mkl = rate(lambda: a @ b)
    out = {"fp32_blas": mkl, "fp32": rate(lambda: onednn_mm(a, b)) if onednn_linear_available() else mkl}
    if bf16 is None:
        bf16 = has_bf16_instructions()
    if bf16:  # without bf16 instructions a bf16 product of this size takes about a minute (11 of them: 11 minutes)
        a16, b16 = a.bfloat16(), b.bfloat16()
        out["bf16"] = rate(lambda: a16 @ b16)
    print("roofline (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in out.items()), flush=True)
    return out


def profile_table(runs: dict[str, list[dict]], roofline: dict[str, float]) -> str:
    """Median seconds per phase (updates after the first) and the update's FLOPs at the roofline of its precision
    (the peer's fp32 at the best fp32 rate too, though its products take the default BLAS route)."""
    from rlhfkit.models.loading import load_causal_lm

    config = load_causal_lm("default").config
    lines = ["| run | " + " | ".join(PHASES) + " | other | update | FLOP (T) | roofline s | achieved GFLOP/s |",
             "|---|" + "---|" * (len(PHASES) + 5)]
    for name, rs in runs.items():
        if not name.startswith("ours"):
            continue
        steps = [st for r in rs for st in r["phases"][1:]]
        step_s = statistics.median(s for r in rs for s in r["seconds"][1:])
        med = {k: statistics.median(st.get(k, 0.0) for st in steps) for k in PHASES}
        p = statistics.mean(st["prompt_width"] for st in steps)
        w = statistics.mean(st["response_width"] for st in steps)
        flops = update_flops(config, rs[0]["batch_size"], round(p), round(w), rs[0].get("ppo_epochs", SETTINGS["ppo_epochs"]),
                             name.startswith("ours B"), peer=False)["total"]
        lines.append(f"| {name} | " + " | ".join(f"{med[k]:.1f}" for k in PHASES) +
                     f" | {step_s - sum(med.values()):.1f} | {step_s:.1f} | {flops / 1e12:.2f} | "
                     f"{flops / roofline[rs[0].get('precision', 'fp32')]:.1f} | "
                     f"{flops / step_s / 1e9:.0f} |")
        if name == "ours A" and "peer A" in runs:  # the peer's same work: logits at every position, no trimming
            peer_s = statistics.median(s for r in runs["peer A"] for s in r["seconds"][1:])
            peer = update_flops(config, SETTINGS["batch_size"], round(p), SETTINGS["max_new_tokens"], SETTINGS["ppo_epochs"],
                                False, peer=True)["total"]
            peer_row = (f"| peer A | " + " | ".join("—" for _ in PHASES) + f" | — | {peer_s:.1f} | {peer / 1e12:.2f} | "
                        f"{peer / roofline['fp32']:.1f} | {peer / peer_s / 1e9:.0f} |")
    return "\n".join(lines + ([peer_row] if "peer_row" in locals() else []))


# ------------------------------------------------------------------------------------------------ generation


def generation_bench(repeats: int, new_tokens: int) -> None:
    """Tokens/s of our sampler vs ``model.generate`` (sampling, full distribution) at batch 8, equal work.

    Both produce exactly ``new_tokens`` per row (EOS is not a stop here), alternating, median of repeats.
    """
    import torch

    from rlhfkit.accel import speed_up
    from rlhfkit.data.formats import prompt_messages, read_records
    from rlhfkit.data.tokenize import encode_prompt, left_pad
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.rollout import sample

    torch.set_num_threads(SETTINGS["threads"])
    tok = load_tokenizer("default")
    model = load_causal_lm("default")
    records = read_records(PROMPTS, "prompt")[:8]
    q, qm = left_pad([encode_prompt(tok, prompt_messages(r), True) for r in records], tok.pad_token_id)
    # what the rollout samples from under precision bf16 with LoRA: the base weights in bf16 (logits fp32)
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ours = copy.deepcopy(model)  # as the trainer sets the policy up on the CPU: fp32 products through oneDNN
    speed_up(ours, device=torch.device("cpu"), head_apart=True)
    times = {"ours": [], "ours_bf16": [], "generate": []}
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        s = sample(ours, q, qm, new_tokens, 0.7, eos_id=-1, pad_id=tok.pad_token_id)
        t1 = time.perf_counter()
        sb = sample(model_bf16, q, qm, new_tokens, 0.7, eos_id=-1, pad_id=tok.pad_token_id)
        t2 = time.perf_counter()
        with torch.inference_mode():
            g = model.generate(input_ids=q, attention_mask=qm, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=True, temperature=0.7, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
        t3 = time.perf_counter()
        assert s["response"].shape[1] == sb["response"].shape[1] == new_tokens and g.shape[1] - q.shape[1] == new_tokens
        if i:  # the first round warms every sampler up
            times["ours"].append(t1 - t0)
            times["ours_bf16"].append(t2 - t1)
            times["generate"].append(t3 - t2)
    res = {k: 8 * new_tokens / statistics.median(v) for k, v in times.items()}
    res["ratio"] = res["ours"] / res["generate"]
    res["ratio_bf16"] = res["ours_bf16"] / res["generate"]
    res["prompt_width"] = q.shape[1]
    print(json.dumps(res), flush=True)
    (OUT / "generation.json").write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--configs", default="A,peer,B,Bbf16,Brecipe",
                    help="order within a round: A, peer, B, Bbf16 (B with precision bf16), Brecipe (B as the tutor recipe runs it)")
    ap.add_argument("--threads", type=int, default=SETTINGS["threads"], help="torch threads, the same on both sides")
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "ppo_vs_trl"), help="output folder")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global OUT
    if args.worker:
        return ours_worker(json.loads(Path(args.job).read_text()), args.result)
    OUT = Path(args.out).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    SETTINGS["threads"] = args.threads
    if args.generate:
        return generation_bench(args.rounds + 1, SETTINGS["max_new_tokens"])
    paths = prepare(ROOT / "bench" / "out" / "ppo_vs_trl-models")
    peer_python = ensure_peer_venv(PEER_VENV) if "peer" in args.configs.split(",") else None  # ours alone: no peer venv
    roofline = measure_roofline(args.threads)
    runs: dict[str, list[dict]] = {}
    names = {"A": "ours A", "peer": "peer A", "B": "ours B", "Bbf16": "ours B bf16", "Brecipe": "ours B recipe"}
    t0 = time.perf_counter()
    for rnd in range(args.rounds):
        for c in args.configs.split(","):
            kind, config = ("peer", "A") if c == "peer" else ("ours", c)
            runs.setdefault(names[c], []).append(side(kind, config, paths, args.updates, f"{c}-{rnd}", peer_python))
    # the machine's rate is the better of two measurements, before and after: one taken while the host
    # steals cycles (a shared VM) read half the other's in one run
    roofline = {k: max(v, w) for (k, v), w in zip(roofline.items(), measure_roofline(args.threads).values())}
    rows = {k: summarise(v) for k, v in runs.items()}
    text = table(rows) + "\n\nPer-phase seconds of our update (median of updates after the first):\n\n" + profile_table(runs, roofline)
    text += "\n\nRoofline (GFLOP/s, 2048² matmuls): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in roofline.items())
    print(text)
    (OUT / "table.md").write_text(text + "\n")
    (OUT / "results.json").write_text(json.dumps({"runs": runs, "rows": rows, "roofline": roofline, "wall_s": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
