import pytest
import torch
from transformers import AutoModelForCausalLM

import rlhfkit.stages.sft as sft
from rlhfkit.config import SFTConfig
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.stages.sft import train_sft
from rlhfkit.tracking import read_metrics
from tests.conftest import check_ctrl_c_during_evaluation


def tiny_cfg(data, out, **kw) -> SFTConfig:
    base = dict(model="tiny", data=str(data), output=str(out), max_steps=40, batch_size=4, lr=5e-3, warmup_steps=2,
                eval_fraction=0.0, save_every=0, report_to="none", threads=1)
    base.update(kw)
    return SFTConfig(**base)


def losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def memorisation_losses(memorise_file, tmp_path, seed: int = 0) -> tuple[float, float]:
    """First and last training loss of 40 SFT steps on the eight-example memorisation set."""
    train_sft(tiny_cfg(memorise_file, tmp_path / "run", seed=seed))
    curve = losses(tmp_path / "run")
    assert len(curve) == 40
    return curve[0], curve[-1]


def test_sft_on_a_memorisation_set_halves_the_training_loss(memorise_file, tmp_path):
    first, last = memorisation_losses(memorise_file, tmp_path)
    assert last <= 0.5 * first
    assert {"loss", "lr", "time_step_s"} <= set(read_metrics(tmp_path / "run" / "metrics.jsonl")[-1])
    # The output folder loads with plain transformers.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert model.config.num_hidden_layers == 2


def test_resume_after_interruption_matches_an_unbroken_run(memorise_file, tmp_path, monkeypatch):
    train_sft(tiny_cfg(memorise_file, tmp_path / "full", max_steps=12))

    calls = {"n": 0}
    real = sft.response_loss

    def interrupt_at_step_8(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # one call per step (no accumulation): Ctrl-C during step 8
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(sft, "response_loss", interrupt_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_sft(tiny_cfg(memorise_file, tmp_path / "part", max_steps=12, save_every=5))
    monkeypatch.setattr(sft, "response_loss", real)
    assert len(losses(tmp_path / "part")) == 7
    train_sft(tiny_cfg(memorise_file, tmp_path / "part", max_steps=12, resume=True))
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "full"), abs=1e-5)


def test_gradient_accumulation_equals_one_big_batch(memorise_file, tmp_path):
    train_sft(tiny_cfg(memorise_file, tmp_path / "one", max_steps=3))
    train_sft(tiny_cfg(memorise_file, tmp_path / "acc", max_steps=3, grad_accum=2))
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)


def test_lora_sft_trains_adapters_and_can_merge(memorise_file, tmp_path):
    out = tmp_path / "lora"
    train_sft(tiny_cfg(memorise_file, out, max_steps=15, lora=True, lr=2e-2, merge_lora=True))
    curve = losses(out)
    assert curve[-1] < curve[0]
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    adapted = load_causal_lm(str(out))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-4)
        assert not torch.allclose(load_causal_lm("tiny")(ids).logits, merged(ids).logits, atol=1e-4)


def test_held_out_loss_and_perplexity_are_logged(memorise_file, tmp_path):
    train_sft(tiny_cfg(memorise_file, tmp_path / "ev", max_steps=4, eval_fraction=0.25, eval_every=2))
    rows = [r for r in read_metrics(tmp_path / "ev" / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[0]["eval_ppl"] == pytest.approx(2.718281828 ** rows[0]["eval_loss"], rel=1e-4)


def test_bf16_autocast_sft_trains_and_keeps_fp32_weights(memorise_file, tmp_path):
    out = tmp_path / "bf16"
    train_sft(tiny_cfg(memorise_file, out, max_steps=20, precision="bf16"))
    curve = losses(out)
    assert curve[-1] <= 0.6 * curve[0]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # autocast: the matmuls ran bf16, the weights stayed fp32


def test_ctrl_c_during_evaluation_saves_the_step_just_taken_and_resume_repeats_nothing(memorise_file, tmp_path, monkeypatch, python_ctrl_c):
    kw = dict(max_steps=9, eval_fraction=0.25, eval_every=3)
    check_ctrl_c_during_evaluation(monkeypatch, tmp_path, train_sft, lambda out, **more: tiny_cfg(memorise_file, out, **kw, **more),
                                   sft, "heldout_loss", saved_step=6, weights="model.safetensors")


def test_a_fresh_run_into_a_used_folder_starts_fresh_tensorboard_curves(memorise_file, tmp_path):
    for _ in range(2):  # the second run, without resume, overwrites the first one's model and log
        train_sft(tiny_cfg(memorise_file, tmp_path / "run", max_steps=2, report_to="tensorboard"))
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 1
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_an_eval_fraction_that_holds_out_nothing_is_said(memorise_file, tmp_path, capsys):
    train_sft(tiny_cfg(memorise_file, tmp_path / "run", max_steps=1, eval_fraction=0.05))  # 5 % of 8 examples
    assert "rounds to none held out: no held-out metrics" in capsys.readouterr().err.replace("\n", " ")


@pytest.mark.parametrize("lora", [False, True])
def test_the_response_loss_from_the_response_columns_equals_the_loss_from_all_logits(lora):
    """response_loss makes logits only from the batch's first response column to its last; with prompts of
    different lengths (right-padded rows) its sum and count equal the cross-entropy over every logit."""
    from rlhfkit.data.tokenize import IGNORE_INDEX, Encoded, collate_right
    from rlhfkit.models.lm_loss import response_loss, response_window
    from rlhfkit.models.loading import add_lora

    torch.manual_seed(0)
    model = load_causal_lm("tiny")
    if lora:
        model = add_lora(model, 8, 16, 0.0, ["q_proj", "v_proj"])
    rows = [(30, 4), (12, 9), (21, 1)]  # (prompt tokens, response tokens): the window spans columns 11 to 33
    examples = []
    for prompt, answer in rows:
        ids = torch.randint(5, 1000, (prompt + answer,)).tolist()
        examples.append(Encoded(ids, [IGNORE_INDEX] * prompt + ids[prompt:], False))
    batch = collate_right(examples, 0)
    assert response_window(batch["labels"][:, 1:]) == (11, 33)
    head = (model.get_base_model() if lora else model).get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    loss, n = response_loss(model, batch)
    hook.remove()
    assert seen == [34 - 11]  # the head ran on the columns from the window's first to the last, not on all 34
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
    assert n == 4 + 9 + 1
    assert float(loss.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    loss.backward()  # the gradient flows through the kept columns
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
