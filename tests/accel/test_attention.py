"""The CPU attention kernel for short sequences: the math kernel up to the length where it measured faster."""

import json

import pytest
import torch

from rlhfkit.accel import attention, cpu_linear


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder, no setting, and no choice remembered in this process."""
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("RLHFKIT_MATH_ATTENTION_MAX_TOKENS", raising=False)
    monkeypatch.delenv("RLHFKIT_ACCEL", raising=False)
    attention.math_attention_max_tokens.cache_clear()
    yield tmp_path
    attention.math_attention_max_tokens.cache_clear()


def timed(ms: dict):
    """A fake measurement: (math, flash) milliseconds per probe length, for whichever dtype is asked."""
    def measure(dtype, tokens=attention.PROBE_TOKENS, reps=2):
        return {n: {"math": m / 1e3, "flash": f / 1e3} for n, (m, f) in ms.items()}
    return measure


def ids(n: int) -> torch.Tensor:
    return torch.zeros(2, n, dtype=torch.long)


def uses_math(n: int) -> bool:
    return type(attention.short_sequence_attention(ids(n))).__name__ != "nullcontext"


def test_the_math_kernel_serves_up_to_the_longest_length_where_it_measured_faster_and_the_choice_is_kept(fresh, monkeypatch, capsys):
    # an AVX-512 machine in bf16: math 2× faster at 128 tokens, even at 256, slower at 512
    monkeypatch.setattr(attention, "measure_kernels", timed({128: (5.0, 10.0), 256: (20.0, 19.0), 512: (90.0, 60.0)}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_math(100) and uses_math(128) and not uses_math(129)
    said = capsys.readouterr().err
    assert "bf16, math / flash kernel: 128 tokens 5.0 / 10.0 ms" in said and "→ the math kernel up to 128 tokens" in said
    saved = json.loads((fresh / cpu_linear.ROUTES_FILE).read_text())[cpu_linear.machine_key() + " | attention bf16"]
    assert saved["math_max_tokens"] == 128 and saved["ms"]["512"] == {"math": 90.0, "flash": 60.0}
    # fp32 is measured apart: here the flash kernel wins everywhere, so no length takes the math kernel
    monkeypatch.setattr(attention, "measure_kernels", timed({128: (15.0, 10.0), 256: (50.0, 38.0), 512: (250.0, 140.0)}))
    assert not uses_math(10)
    # the next process reads both choices: nothing measured, nothing said
    attention.math_attention_max_tokens.cache_clear()
    capsys.readouterr()
    monkeypatch.setattr(attention, "measure_kernels", lambda *a, **k: pytest.fail("measured again"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_math(128) and not uses_math(200)
    assert not uses_math(10)
    assert capsys.readouterr().err == ""


def test_a_setting_or_the_speed_paths_off_need_no_measurement(fresh, monkeypatch):
    monkeypatch.setattr(attention, "measure_kernels", lambda *a, **k: pytest.fail("a setting needs no measurement"))
    monkeypatch.setenv("RLHFKIT_MATH_ATTENTION_MAX_TOKENS", "300")
    assert uses_math(300) and not uses_math(301)
    monkeypatch.setenv("RLHFKIT_ACCEL", "0")
    assert not uses_math(10)
    monkeypatch.setenv("RLHFKIT_ACCEL", "1")
    monkeypatch.setenv("RLHFKIT_MATH_ATTENTION_MAX_TOKENS", "lots")
    attention.math_attention_max_tokens.cache_clear()
    with pytest.raises(ValueError, match="RLHFKIT_MATH_ATTENTION_MAX_TOKENS: expected a whole number"):
        uses_math(10)


def test_the_probe_times_both_kernels_on_real_attention_inside_a_no_grad_pass_and_leaves_the_runs_random_numbers_alone(
        fresh, monkeypatch):
    monkeypatch.setattr(attention, "PROBE_TOKENS", (32, 64))
    real = attention.measure_kernels
    got = {}
    monkeypatch.setattr(attention, "measure_kernels", lambda dtype: got.setdefault(dtype, real(dtype, tokens=(32, 64), reps=1)))
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    with torch.inference_mode():  # where the first pass asks: sampling, the reference pass
        attention.short_sequence_attention(ids(20))
    assert torch.equal(torch.rand(4), expected)  # the run samples what it would have sampled without the probe
    times = got[torch.float32]
    assert set(times) == {32, 64} and all(set(t) == {"math", "flash"} and min(t.values()) > 0 for t in times.values())
