"""Sampling speed against this machine's fp32 roofline, at the demo's batch: our sampler vs ``model.generate``.

One command (nothing else should run meanwhile):
  .venv/bin/python bench/sampling.py [--rows 32] [--new-tokens 80] [--repeats 3] [--threads 2]
It measures the machine's matmul rates (2048² products, best of 10: fp32 through torch's default BLAS route and
through oneDNN, and bf16 where the CPU has bf16 instructions), then samples ``--rows`` answers of exactly ``--new-tokens`` tokens (EOS is no stop here)
from the shipped model for tutor prompts (8 prompts × 4 rows each, as ``rlhf sample`` batches them), in fp32:

  generate      ``model.generate`` (full distribution, temperature 1), what ``rlhf sample`` and ``rlhf eval`` called before
  ours-unshared ``models/rollout.sample`` with every row computing its own prompt pass (the loop before prompt sharing)
  ours          ``models/rollout.sample``: rows repeating a prompt share its pass (what sample, eval and the trainers call)
  ours+route    the same after ``accel.speed_up`` (the linear route this machine's measurement chose; the head apart)

For each: tokens/s (rows × new tokens / seconds, median of repeats after a warm-up round), GFLOP/s achieved
(``lm_forward_flops``: the prompt pass and every decoding step, attention over the growing context) and that as a
share of the better fp32 roofline, beside the machine's measured choices (the product routes, what ``precision:
auto`` takes). To stand in for a CPU without AVX-512 or bf16, run it with ``ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2``. Output: one JSON line on stdout and bench/out/sampling/<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_vs_trl import lm_forward_flops, measure_roofline  # noqa: E402  (the FLOP count and rooflines the PPO bench uses)
PROMPTS = ROOT / "src" / "rlhfkit" / "recipes" / "tutor" / "prompts.jsonl"


def sampling_flops(config, rows: int, prompt: int, new: int) -> float:
    """The prompt pass (one logit row per sequence) and ``new`` one-token steps over a context that grows."""
    total = lm_forward_flops(config, rows * prompt, prompt / 2, rows)
    for step in range(new):
        total += lm_forward_flops(config, rows, prompt + step, rows)
    return total


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return ""
    keep = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    return " ".join(sorted(keep))


def cpu_model() -> str:
    try:
        info = {}
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        return f"{info.get('model name', '?')} family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    except OSError:
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32, help="rows decoded together (the demo: 8 prompts × K = 4)")
    ap.add_argument("--new-tokens", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "sampling"))
    args = ap.parse_args()

    import torch

    from rlhfkit.accel import speed_up
    from rlhfkit.accel.cpu_linear import ISA_SETTINGS, onednn_chosen
    from rlhfkit.accel.precision import resolve_precision
    from rlhfkit.accel.runtime import set_threads
    from rlhfkit.data.formats import prompt_messages, read_records
    from rlhfkit.data.tokenize import encode_prompt, left_pad
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    import rlhfkit.models.rollout as rollout
    from rlhfkit.models.rollout import sample

    set_threads(args.threads)  # as every stage sets up: the threads, and the allocator keeping freed memory for reuse
    roof = measure_roofline(args.threads)  # bf16 too where the CPU's flags name bf16 instructions
    tok = load_tokenizer("default")
    plain = load_causal_lm("default")
    routed = load_causal_lm("default")
    speed_up(routed, device=torch.device("cpu"), head_apart=True)
    per = max(1, args.rows // 4)
    records = read_records(PROMPTS, "prompt")[:per]
    ids = [encode_prompt(tok, prompt_messages(r), True) for r in records]
    q, qm = left_pad([p for p in ids for _ in range(args.rows // per)], tok.pad_token_id)
    rows, new = q.shape[0], args.new_tokens

    def generate():
        with torch.inference_mode():
            g = plain.generate(input_ids=q, attention_mask=qm, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                               temperature=1.0, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
        assert g.shape[1] - q.shape[1] == new

    def ours(model, share: bool = True):
        def run():
            real = rollout.shared_prompts
            if not share:
                rollout.shared_prompts = lambda q_, m_: (None, real(q_, m_)[1])
            try:
                s = sample(model, q, qm, new, 1.0, eos_id=-1, pad_id=tok.pad_token_id)
            finally:
                rollout.shared_prompts = real
            assert s["response"].shape[1] == new
        return run

    runs = {"generate": generate, "ours-unshared": ours(plain, share=False), "ours": ours(plain), "ours+route": ours(routed)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.repeats + 1):
        for name, fn in runs.items():  # alternating, so a slow spell of the machine hits every sampler
            t0 = time.perf_counter()
            fn()
            if i:  # the first round warms every sampler up
                times[name].append(time.perf_counter() - t0)
    flops = sampling_flops(plain.config, rows, q.shape[1], new)
    best = max(v for k, v in roof.items() if k.startswith("fp32"))
    res = {"machine": cpu_model(), "flags": cpu_flags(), "torch": torch.__version__, "threads": args.threads,
           "rows": rows, "prompt_width": q.shape[1], "new_tokens": new, "route_chosen": {k: "onednn" if onednn_chosen(k) else "blas" for k in ("training", "decoding")},
           "precision_auto": resolve_precision("auto", "cpu"),
           "isa_caps": {n: os.environ[n] for n in ISA_SETTINGS if os.environ.get(n)},
           "roofline_gflops": {k: round(v / 1e9, 1) for k, v in roof.items()}, "gflop_per_run": round(flops / 1e9, 1)}
    for name, ts in times.items():
        s = statistics.median(ts)
        res[name] = {"seconds": round(s, 2), "tokens_per_s": round(rows * new / s, 1),
                     "gflops": round(flops / s / 1e9, 1), "share_of_fp32_roofline": round(flops / s / best, 3)}
    res["ours_over_generate"] = round(statistics.median(times["generate"]) / statistics.median(times["ours"]), 2)
    print(json.dumps(res), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "-".join(res["machine"].replace("/", " ").split()).lower()
    if res["isa_caps"]:  # a capped run stands in for another machine kind: its own file
        name += "-capped-" + next(iter(res["isa_caps"].values())).lower()
    (out / f"{name}-rows{rows}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
