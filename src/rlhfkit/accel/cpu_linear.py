"""fp32 linear layers on the CPU through oneDNN instead of the default BLAS route, forward and backward.

torch's CPU ``F.linear`` and ``mm`` in fp32 go to MKL's sgemm, which on AMD processors runs its AVX2 code
path. oneDNN (shipped inside torch, ``torch.ops.mkldnn``) uses AVX-512 where the CPU has it. It is the same
fp32 arithmetic in another summation order: results agree to ~1e-6 relative (tests/accel/test_cpu_linear.py).
bf16 matmuls (autocast) already go through oneDNN and are left alone. Which route is faster depends on the
CPU (on one without AVX-512 it can be the slower one), so it is measured, not assumed: the first model set-up
on a machine times fp32 products of a 135M model's training shapes both ways (:func:`measure_routes`, about a
second), and a decoding step's skinny shapes apart (``DECODE_ROWS``), keeps oneDNN only when it is ≥ 5 % faster,
caches each choice per machine (CPU model, its vector flags, torch version) in the cache folder and says it once
("fp32 products on this CPU, training shapes: BLAS 129 GFLOP/s, oneDNN 115 → BLAS").

:func:`use_onednn_linears` switches a model's plain ``nn.Linear`` layers to :class:`OneDNNLinear`, a
subclass with the same parameters, state dict and hooks, whose forward takes this route whenever it
applies (CPU, fp32 input and weight, autocast off, both matrix sides ≥ ``MIN_DIM``) and ``F.linear`` else.
``RLHFKIT_CPU_MATMUL=blas`` in the environment keeps every product on torch's default route,
``RLHFKIT_CPU_MATMUL=onednn`` takes oneDNN's without measuring.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from rlhfkit.accel.runtime import accel_on

MIN_DIM = 64  # narrower products (LoRA's rank-16 factors, 1-output heads) ran as fast or faster through MKL
ROUTES_FILE = "cpu-routes.json"  # in the cache folder: {machine key: the measurement and the choice}
# (rows, inner, outer) of the products timed: a 135M Llama's attention and MLP projections on 512 tokens
PROBE_SHAPES = ((512, 576, 576), (512, 576, 1536), (512, 1536, 576))
# A decoding step's products are skinny (a row per answer) and the routes rank differently on them: on an AVX2-only
# machine BLAS won the training shapes (150 against 121 GFLOP/s) and lost the 32-row output head (40 ms against 23).
# Products of at most DECODE_ROWS rows take the route measured on PROBE_DECODE_SHAPES: 32 rows through the
# projections and a 49k-token output head.
DECODE_ROWS = 64
PROBE_DECODE_SHAPES = ((32, 576, 1536), (32, 1536, 576), (32, 576, 49152))
ROUTE_PROBES = {"training": PROBE_SHAPES, "decoding": PROBE_DECODE_SHAPES}
ISA_SETTINGS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")  # part of the machine's key
ONEDNN_MARGIN = 1.05  # oneDNN must be this much faster to be chosen (BLAS is torch's own route)


@functools.cache
def onednn_linear_available() -> bool:
    """Whether torch's oneDNN linear ops exist and run here (CPU builds with mkldnn) and are not switched off."""
    if os.environ.get("RLHFKIT_CPU_MATMUL", "").lower() == "blas":
        return False
    try:  # a transposed view as the weight: the backward's products pass such views
        out = onednn_mm(torch.ones(1, 2), torch.ones(2, 3).t())
        return bool(torch.equal(out, torch.full((1, 3), 2.0)))
    except (AttributeError, RuntimeError):
        return False


def machine_key() -> str:
    """CPU model, its vector-instruction flags, the torch version, the thread count and any instruction-set cap set
    for oneDNN, MKL or torch (``ISA_SETTINGS``): what decides which route is faster."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = {f for f in value.split() if f.startswith(("avx", "amx", "fma"))}
                break
    except OSError:
        pass
    key = f"{model} | {' '.join(sorted(flags))} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    # the libraries' own instruction-set caps (e.g. ONEDNN_MAX_CPU_ISA=AVX2 to stand in for a CPU without AVX-512)
    caps = [f"{name}={os.environ[name]}" for name in ISA_SETTINGS if os.environ.get(name)]
    return key + "".join(f" | {c}" for c in caps)


def measure_routes(shapes=PROBE_SHAPES, reps: int = 3) -> dict:
    """GFLOP/s of fp32 products of ``shapes`` through BLAS (F.linear) and through oneDNN, the best of ``reps``
    (:func:`rates_in_turns`)."""
    return rates_in_turns(shapes, {"blas": (torch.nn.functional.linear, torch.float32),
                                   "onednn": (onednn_mm, torch.float32)}, reps)


def rates_in_turns(shapes, routes: dict, reps: int = 3) -> dict:
    """GFLOP/s of the products ``shapes`` ((rows, inner, outer) each) by each route, the best of ``reps``.

    ``routes``: name → (product function ``f(a, w) = a · wᵀ``, operand dtype). The routes take turns, one repetition
    each, so that a machine busy for part of the measurement slows both alike: the choice is kept for good, and
    timing one route whole and then the other let a burst of other work land on one of them. Operands come from a
    generator of their own: the first measurement happens inside a run (its first product of a kind), and drawing
    from torch's global one would change what that run samples next."""
    gen = torch.Generator().manual_seed(0)
    fp32 = [(torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)) for m, k, n in shapes]
    cases = {name: [(a.to(dtype), w.to(dtype)) for a, w in fp32] for name, (_, dtype) in routes.items()}
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for name, (mm, _) in routes.items():
        for a, w in cases[name]:  # warm up: first calls pick kernels and allocate
            mm(a, w)
    best = dict.fromkeys(routes, float("inf"))
    for _ in range(reps):
        for name, (mm, _) in routes.items():  # in turn
            t0 = time.perf_counter()
            for a, w in cases[name]:
                mm(a, w)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: flops / seconds / 1e9 for name, seconds in best.items()}


def cached_choice(kind: str, measure) -> dict:
    """This machine's measured choice of ``kind`` (a product route, the precision, the attention kernel): read from the cache folder, or
    measured now by ``measure() -> (record, line)``, saved under the machine's key (:func:`machine_key`) and its line
    said once on stderr. A read-only cache folder only means measuring again next time."""
    from rlhfkit.models.loading import cache_dir

    path, key = cache_dir() / ROUTES_FILE, machine_key() + ("" if kind == "training" else f" | {kind}")
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key], line = measure()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache: measured again next time
        sys.stderr.write(f"rlhfkit: {line} (measured once, kept in {path})\n")
    return known[key]


@functools.cache
def onednn_chosen(kind: str = "training") -> bool:
    """Whether fp32 products of ``kind`` (``training``: many rows; ``decoding``: at most DECODE_ROWS) take the oneDNN
    route: the setting (``RLHFKIT_CPU_MATMUL``), else this machine's cached measurement of that kind's shapes, else a
    new one (saved, and said once on stderr)."""
    setting = os.environ.get("RLHFKIT_CPU_MATMUL", "").lower()
    if setting == "blas" or not onednn_linear_available():
        return False
    if setting == "onednn":
        return True

    def measure():
        rates = measure_routes(ROUTE_PROBES[kind])
        route = "onednn" if rates["onednn"] >= ONEDNN_MARGIN * rates["blas"] else "blas"
        line = (f"fp32 products on this CPU, {kind} shapes: BLAS {rates['blas']:.0f} GFLOP/s, oneDNN {rates['onednn']:.0f} "
                f"→ {'oneDNN' if route == 'onednn' else 'BLAS'}; RLHFKIT_CPU_MATMUL=blas|onednn overrides")
        return {"blas_gflops": round(rates["blas"], 1), "onednn_gflops": round(rates["onednn"], 1), "route": route}, line

    return cached_choice(kind, measure)["route"] == "onednn"


def onednn_mm(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """a · b_tᵀ (+ bias) for 2-D fp32 CPU tensors through oneDNN; either operand may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


def applies(x: Tensor, weight: Tensor) -> bool:
    """Whether ``x · weightᵀ`` takes the oneDNN route (see the module's docstring)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and min(weight.shape) >= MIN_DIM and not torch.is_autocast_enabled("cpu") and accel_on()
            and onednn_chosen("decoding" if x.numel() <= DECODE_ROWS * x.shape[-1] else "training"))


class OneDNNLinearFn(torch.autograd.Function):
    """y = x·Wᵀ + b with all three products (forward, ∂x = g·W, ∂W = gᵀ·x) through oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(flat, weight)
        ctx.in_shape, ctx.has_bias = x.shape, bias is not None
        return onednn_mm(flat, weight, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])
        grad_x = onednn_mm(g, weight.t()).reshape(ctx.in_shape) if ctx.needs_input_grad[0] else None
        grad_w = onednn_mm(g.t(), flat.t()) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear``, through oneDNN where that applies."""
    if applies(x, weight):
        return OneDNNLinearFn.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose product goes through oneDNN where that applies; otherwise identical."""

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)


def use_onednn_linears(model: torch.nn.Module, skip: tuple[torch.nn.Module, ...] = ()) -> int:
    """Switch ``model``'s plain ``nn.Linear`` layers (not ``skip``) to :class:`OneDNNLinear`; returns how many.

    Nothing changes where oneDNN is not available. The switch keeps parameters, buffers, hooks and the
    state dict; ``isinstance(layer, nn.Linear)`` stays true, so peft and saving see the same model.
    """
    if not accel_on() or not (onednn_chosen("training") or onednn_chosen("decoding")):
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and not any(module is s for s in skip):
            module.__class__ = OneDNNLinear
            count += 1
    return count
