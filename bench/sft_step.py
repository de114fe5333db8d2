"""SFT step time on the shipped model: batch 8 × 256 tokens (64 of them prompt), full fine-tuning and LoRA.
``--tokens 124 --prompt-tokens 112`` is the asr recipe's shape (a long prompt, a short transcript).

    .venv/bin/python bench/sft_step.py [--steps 5] [--lora] [--precision fp32|bf16|bf16-base] [--tokens 256] [--prompt-tokens 64]

``bf16``: bf16 autocast over fp32 weights (SFT's ``precision: bf16``); ``bf16-base`` (LoRA only): the frozen
base weights themselves in bf16 under autocast, the adapters fp32 (what PPO's LoRA policy does under bf16).

fp32 products go through oneDNN as in ``rlhf sft`` on the CPU; ``RLHFKIT_CPU_MATMUL=blas`` measures torch's
default BLAS route instead. Prints the median seconds per optimiser step (after one warm-up step) and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from rlhfkit.accel.cpu_linear import use_onednn_linears
from rlhfkit.accel.precision import autocast
from rlhfkit.data.tokenize import IGNORE_INDEX, Encoded, collate_right
from rlhfkit.models.lm_loss import response_loss
from rlhfkit.models.loading import add_lora, load_causal_lm, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=64, help="of --tokens: masked, the loss covers the rest")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "bf16", "bf16-base"], default="fp32")
    args = ap.parse_args()
    if args.precision == "bf16-base" and not args.lora:
        ap.error("--precision bf16-base needs --lora (full fine-tuning trains the base weights)")
    tok = load_tokenizer("default")
    model = load_causal_lm("default", dtype=torch.bfloat16 if args.precision == "bf16-base" else torch.float32)
    if args.lora:
        model = add_lora(model, targets=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    use_onednn_linears(model)  # as train_sft does on the CPU (RLHFKIT_CPU_MATMUL=blas: torch's default route)
    model.train()
    g = torch.Generator().manual_seed(0)
    # --prompt-tokens (masked) + the rest, the response, per example: the loss covers the response.
    examples = []
    for _ in range(args.batch):
        ids = torch.randint(100, 40000, (args.tokens,), generator=g).tolist()
        examples.append(Encoded(ids, [IGNORE_INDEX] * args.prompt_tokens + ids[args.prompt_tokens:], False))
    batch = collate_right(examples, tok.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)  # as the stages' (run.py)
    times = []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        with autocast("fp32" if args.precision == "fp32" else "bf16"):
            loss, n = response_loss(model, batch)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"mode": "lora" if args.lora else "full", "precision": args.precision, "batch": args.batch, "tokens": args.tokens,
                      "prompt_tokens": args.prompt_tokens,
                      "median_step_s": round(statistics.median(times[1:]), 3), "steps": args.steps,
                      "threads": torch.get_num_threads(), "peak_rss_gib": round(peak_gib, 2)}))


if __name__ == "__main__":
    main()
