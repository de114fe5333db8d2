"""precision: auto takes bf16 on a CPU only where bf16 products measured faster than fp32's, once per machine."""

import json

import pytest
import torch

from rlhfkit.accel import cpu_linear, precision


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and no choice remembered in this process."""
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("RLHFKIT_CPU_MATMUL", "blas")  # the fp32 side of the probe needs no route measurement
    monkeypatch.delenv("RLHFKIT_ACCEL", raising=False)
    precision.cpu_bf16_pays.cache_clear()
    cpu_linear.onednn_chosen.cache_clear()
    yield tmp_path
    precision.cpu_bf16_pays.cache_clear()
    cpu_linear.onednn_chosen.cache_clear()


def rates(fp32: float, bf16: float):
    def measure(shapes, routes, reps=3):
        assert set(routes) == {"fp32", "bf16"} and routes["bf16"][1] is torch.bfloat16 and routes["fp32"][1] is torch.float32
        return {"fp32": fp32, "bf16": bf16}
    return measure


def test_auto_precision_is_measured_once_per_machine_kept_and_said_once(fresh, monkeypatch, capsys):
    monkeypatch.setattr(cpu_linear, "rates_in_turns", rates(190.0, 428.0))  # a CPU with bf16 instructions
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert "fp32 190 GFLOP/s, bf16 428 → bf16" in capsys.readouterr().err
    saved = json.loads((fresh / cpu_linear.ROUTES_FILE).read_text())
    assert saved[cpu_linear.machine_key() + " | precision"] == {"fp32_gflops": 190.0, "bf16_gflops": 428.0, "precision": "bf16"}
    # the next process on this machine reads the choice: no second measurement, nothing said
    precision.cpu_bf16_pays.cache_clear()
    monkeypatch.setattr(cpu_linear, "rates_in_turns", lambda *a, **k: pytest.fail("measured again"))
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("fp32, bf16, chosen", [(129.0, 12.0, "fp32"),  # bf16 emulated: far slower
                                                (190.0, 220.0, "fp32"),  # faster, but by less than BF16_MARGIN
                                                (190.0, 240.0, "bf16")])
def test_bf16_is_chosen_only_when_it_is_clearly_faster(fresh, monkeypatch, fp32, bf16, chosen):
    monkeypatch.setattr(cpu_linear, "rates_in_turns", rates(fp32, bf16))
    assert precision.resolve_precision("auto", "cpu") == chosen


def test_a_setting_or_the_speed_paths_off_need_no_measurement(fresh, monkeypatch):
    monkeypatch.setattr(cpu_linear, "rates_in_turns", lambda *a, **k: pytest.fail("a setting needs no measurement"))
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setenv("RLHFKIT_ACCEL", "0")
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("fp8", "cpu")


def test_the_probe_times_real_fp32_and_bf16_products_and_leaves_the_runs_random_numbers_alone():
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    got = cpu_linear.rates_in_turns([(64, 128, 96)], {"fp32": (torch.nn.functional.linear, torch.float32),
                                                       "bf16": (torch.nn.functional.linear, torch.bfloat16)}, reps=1)
    assert set(got) == {"fp32", "bf16"} and all(r > 0.01 for r in got.values())  # GFLOP/s of real work
    assert torch.equal(torch.rand(4), expected)


def test_an_instruction_set_cap_is_another_machine(monkeypatch):
    """A run told to use AVX2 only (the stand-in for a CPU without AVX-512) must not read the uncapped run's choices."""
    for name in cpu_linear.ISA_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    plain = cpu_linear.machine_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_linear.machine_key() == plain + " | ONEDNN_MAX_CPU_ISA=AVX2"
