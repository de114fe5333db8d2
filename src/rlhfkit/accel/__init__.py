"""CPU speed paths: the same numbers as plain PyTorch, computed faster on a CPU.

oneDNN linear layers (``cpu_linear.py``), the fused fp32 output head and its log-probs (``head.py``) and
the precision choice (``precision.py``). ``RLHFKIT_CPU_MATMUL=blas`` turns the oneDNN route off; each path
has a test that shows it computes what the plain route does.
"""
