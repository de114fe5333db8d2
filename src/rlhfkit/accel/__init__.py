"""CPU speed paths: the same numbers as plain PyTorch, computed faster on a CPU.

- ``cpu_linear.py``: fp32 linear layers through oneDNN instead of the default BLAS route;
- ``head.py``: the output head in fp32, its per-token log-probs fused with the product;
- ``sampler.py``: one uniform number per row picks the token (a two-level inverse CDF);
- ``attention.py``: SDPA's math kernel for short sequences;
- ``runtime.py``: thread count and the allocator's reuse of freed memory;
- ``precision.py``: bf16 where the CPU has bf16 instructions, and the casts it needs.

:func:`speed_up` applies the layer-level path to a stage's models in one call at set-up.
The oneDNN route is taken where a measurement on this machine finds it faster (cached per machine; see
``cpu_linear.py``). ``RLHFKIT_ACCEL=0`` turns every path off, leaving a plain PyTorch program (fp32 for ``precision: auto`` on a
CPU; the sampler stays, as it is how one uniform number per row draws a token); ``RLHFKIT_CPU_MATMUL=blas``
turns off the oneDNN route alone and ``RLHFKIT_KEEP_FREED_MEMORY=0`` the allocator setting alone. Each path has a test in ``tests/accel/`` that
shows it computes what the plain route computes; measured speed-ups are in bench/RESULTS.md.
"""

from __future__ import annotations

import torch

from rlhfkit.accel.cpu_linear import use_onednn_linears


def speed_up(*models: torch.nn.Module | None, device: torch.device, head_apart: bool = False) -> None:
    """Put the fp32 linear layers of ``models`` (None: skipped) on the oneDNN route; a no-op off the CPU.

    ``head_apart``: leave each model's output head alone, for a trainer whose head has its own fp32 route
    (:mod:`rlhfkit.accel.head`).
    """
    if device.type != "cpu":
        return
    for model in models:
        if model is None:
            continue
        head = model.get_output_embeddings() if head_apart and hasattr(model, "get_output_embeddings") else None
        use_onednn_linears(model, skip=() if head is None else (head,))
