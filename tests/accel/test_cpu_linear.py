"""fp32 linear layers through oneDNN on the CPU: the same model, outputs and gradients as through F.linear."""

import copy
import json

import pytest
import torch

from rlhfkit.accel import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.onednn_linear_available(), reason="this torch build has no oneDNN linear ops")


@pytest.fixture(autouse=True)
def on_onednn(onednn_route):
    """These tests compare the oneDNN route with BLAS's, whichever this machine's measurement chose."""


def test_the_route_is_measured_once_per_machine_cached_and_a_setting_overrides_it(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RLHFKIT_CPU_MATMUL")
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    rates = {"blas": 129.0, "onednn": 115.0}  # the AVX2-only machine's figures: BLAS is the faster one there
    monkeypatch.setattr(cpu_linear, "measure_routes", lambda shapes: rates)
    cpu_linear.onednn_chosen.cache_clear()
    assert cpu_linear.onednn_chosen() is False
    assert not cpu_linear.applies(torch.randn(512, 64), torch.randn(64, 64))
    assert "BLAS 129 GFLOP/s, oneDNN 115 → BLAS" in capsys.readouterr().err
    saved = json.loads((tmp_path / cpu_linear.ROUTES_FILE).read_text())
    assert saved == {cpu_linear.machine_key(): {"blas_gflops": 129.0, "onednn_gflops": 115.0, "route": "blas"}}
    # the next process on this machine reads the choice: no second measurement, nothing said
    monkeypatch.setattr(cpu_linear, "measure_routes", lambda shapes: pytest.fail("measured again"))
    cpu_linear.onednn_chosen.cache_clear()
    assert cpu_linear.onednn_chosen() is False and capsys.readouterr().err == ""
    # within 5 %: BLAS (torch's own route) is kept; a clear oneDNN win takes oneDNN
    for blas, onednn, chosen in ((100.0, 104.0, False), (190.0, 428.0, True)):
        (tmp_path / cpu_linear.ROUTES_FILE).unlink()
        monkeypatch.setattr(cpu_linear, "measure_routes", lambda shapes, b=blas, o=onednn: {"blas": b, "onednn": o})
        cpu_linear.onednn_chosen.cache_clear()
        assert cpu_linear.onednn_chosen() is chosen
    for setting, chosen in (("blas", False), ("onednn", True)):
        monkeypatch.setenv("RLHFKIT_CPU_MATMUL", setting)
        monkeypatch.setattr(cpu_linear, "measure_routes", lambda shapes: pytest.fail("a setting needs no measurement"))
        cpu_linear.onednn_linear_available.cache_clear()
        cpu_linear.onednn_chosen.cache_clear()
        assert cpu_linear.onednn_chosen() is chosen
    cpu_linear.onednn_linear_available.cache_clear()


def test_a_decoding_steps_skinny_products_have_a_route_of_their_own(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RLHFKIT_CPU_MATMUL")
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    # the AVX2-only machine's figures: BLAS wins the training shapes, oneDNN the decoding ones
    rates = {cpu_linear.PROBE_SHAPES: {"blas": 150.0, "onednn": 121.0},
             cpu_linear.PROBE_DECODE_SHAPES: {"blas": 45.0, "onednn": 79.0}}
    monkeypatch.setattr(cpu_linear, "measure_routes", lambda shapes: rates[shapes])
    cpu_linear.onednn_chosen.cache_clear()
    w = torch.randn(64, 64)
    assert cpu_linear.applies(torch.randn(32, 64), w)  # a decoding step: 32 rows
    assert cpu_linear.applies(torch.randn(4, 8, 64), w)  # 32 rows as (batch, 1 token, hidden) would be too
    assert not cpu_linear.applies(torch.randn(512, 64), w)  # a training pass's rows
    assert "decoding shapes: BLAS 45 GFLOP/s, oneDNN 79 → oneDNN" in capsys.readouterr().err
    saved = json.loads((tmp_path / cpu_linear.ROUTES_FILE).read_text())
    assert saved[cpu_linear.machine_key() + " | decoding"]["route"] == "onednn"
    assert saved[cpu_linear.machine_key()]["route"] == "blas"
    # a model's layers switch when either route is oneDNN's; each product then picks its route by its rows
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    assert cpu_linear.use_onednn_linears(model) == 1
    x = torch.randn(512, 64)
    torch.testing.assert_close(model(x), x @ model[0].weight.t() + model[0].bias)


def test_the_measurement_times_both_routes_on_real_products_and_leaves_the_runs_random_numbers_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    rates = cpu_linear.measure_routes(reps=1)  # measured inside a run, on its first product of a kind
    assert set(rates) == {"blas", "onednn"} and all(r > 0.1 for r in rates.values())  # GFLOP/s of real work
    assert torch.equal(torch.rand(4), expected)  # the run samples what it would have sampled without the measurement


def test_the_routes_take_turns_so_a_burst_of_other_work_slows_both_alike(monkeypatch):
    """A fake clock: each product costs its route's time, and the machine is busy (every product 10× slower) for
    the first three products timed after warm-up. Timed one route whole and then the other, that burst would cover
    all three of BLAS's repetitions and make it look 10× slower than it is; taking turns, each route keeps a clean
    repetition and the best one is its true rate."""
    clock, calls = [0.0], []
    cost = {"blas": 1.0, "onednn": 2.0}

    def route(name):
        def mm(a, w):
            calls.append(name)
            timed = len(calls) - 2  # the first two calls are the warm-up (one shape, two routes)
            clock[0] += cost[name] * (10 if 1 <= timed <= 3 else 1)
        return mm

    monkeypatch.setattr(cpu_linear.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(cpu_linear, "onednn_mm", route("onednn"))
    monkeypatch.setattr(torch.nn.functional, "linear", route("blas"))
    rates = cpu_linear.measure_routes(shapes=[(1, 1, 1)], reps=3)
    assert calls == ["blas", "onednn"] + ["blas", "onednn"] * 3  # warm-up, then one repetition of each in turn
    assert rates == {"blas": pytest.approx(2 / 1.0 / 1e9), "onednn": pytest.approx(2 / 2.0 / 1e9)}


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def test_switched_linears_give_the_same_logits_and_gradients_and_keep_the_model():
    plain = tiny_llama()
    fast = copy.deepcopy(plain)
    n = cpu_linear.use_onednn_linears(fast, skip=(fast.lm_head,))
    assert n == 2 * 7  # q, k, v, o, gate, up, down per layer; the head is skipped
    assert type(fast.lm_head) is torch.nn.Linear
    assert all(isinstance(m, torch.nn.Linear) for m in fast.modules() if isinstance(m, cpu_linear.OneDNNLinear))
    assert list(fast.state_dict()) == list(plain.state_dict())
    ids = torch.randint(0, 128, (3, 11))
    out_plain, out_fast = plain(ids).logits, fast(ids).logits
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out_plain)
    (out_plain * g).sum().backward()
    (out_fast * g).sum().backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_the_route_is_taken_only_for_wide_fp32_products_without_autocast():
    x, w = torch.randn(5, 64), torch.randn(96, 64)
    assert cpu_linear.applies(x, w)
    assert not cpu_linear.applies(x, torch.randn(16, 64))  # LoRA's rank-16 factor: MKL
    assert not cpu_linear.applies(x.bfloat16(), w.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_linear.applies(x, w)  # autocast's bf16 product is oneDNN's already
        y = cpu_linear.linear(x, w)
    assert y.dtype == torch.bfloat16
    bias = torch.randn(96)
    torch.testing.assert_close(cpu_linear.linear(x, w, bias), torch.nn.functional.linear(x, w, bias), atol=1e-5, rtol=1e-5)


def test_lora_wraps_a_switched_model_and_trains_only_its_adapters():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    cpu_linear.use_onednn_linears(model, skip=(model.lm_head,))
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    base = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(base) is cpu_linear.OneDNNLinear
    ids = torch.randint(0, 128, (2, 9))
    model(ids).logits.sum().backward()
    assert base.weight.grad is None
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.grad is not None
