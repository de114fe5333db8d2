import json
import math
import random
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import rlhfkit.models.reward as reward_model
import rlhfkit.stages.reward_model as reward
from rlhfkit.checkpoint import load_state
from rlhfkit.config import RewardConfig
from rlhfkit.data.formats import RecordError, prompt_key, read_records
from rlhfkit.data.groups import build_groups, flatten
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward import RewardScorer, build_reward_model, load_stats, score_texts
from rlhfkit.stages.reward_model import batch_loss, bt_loss, train_reward
from rlhfkit.tracking import read_metrics
from tests.conftest import check_ctrl_c_during_evaluation, write_jsonl

WORDS = "the a film story plot actor scene music ending camera light night day city house road water tree".split()


def cli(*args: str) -> str:
    """Run the ``rlhf`` app in this process (a subprocess would spend its time importing torch); returns stdout."""
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"rlhf {' '.join(args)} failed: {result.output[-3000:]} {result.exception!r}"
    return result.stdout


def test_bradley_terry_loss_on_hand_computed_values():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert float(bt_loss(chosen, rejected)) == pytest.approx(expected)
    # A margin asks for a larger gap: −log σ(2 − 0 − 1) and −log σ(0 − 1 − 0.5).
    expected_m = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.5))) / 2
    assert float(bt_loss(chosen, rejected, torch.tensor([1.0, 0.5]))) == pytest.approx(expected_m)


def test_a_batch_scores_each_distinct_response_once_and_indexes_pairs_by_group():
    groups = build_groups([{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]},
                           {"prompt": "p", "responses": ["c", "a", "b"], "ranking": [1, 0, 2]},
                           {"prompt": "q", "chosen": "x", "rejected": "y"}])
    prompts, responses, offsets = flatten(groups)
    assert responses == ["a", "b", "c", "x", "y"] and offsets == [0, 3]
    rewards = torch.tensor([3.0, 2.0, 1.0, 0.0, 5.0])  # p: a > b > c right; q: y > x wrong
    loss, m = batch_loss(rewards, groups, offsets, use_margin=False)
    assert m["n_pairs"] == 7 and m["accuracy"] == pytest.approx(5 / 7)
    assert float(loss) == pytest.approx(float(bt_loss(torch.tensor([3., 3, 2, 2, 2, 3, 0]), torch.tensor([2., 1, 1, 3, 1, 1, 5]))))


def test_a_records_weight_weights_its_pairs_in_the_loss_and_ratings_pairs_take_the_product():
    # −log σ(2 − 0) with weight 3 and −log σ(0 − 1) with weight 1: the weighted mean
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (3 * math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 4
    assert float(bt_loss(chosen, rejected, weight=torch.tensor([3.0, 1.0]))) == pytest.approx(expected)
    groups = build_groups([{"prompt": "p", "chosen": "a", "rejected": "b", "weight": 3},
                           {"prompt": "q", "chosen": "x", "rejected": "y"},
                           {"prompt": "r", "response": "u", "score": 6, "weight": 0.5},
                           {"prompt": "r", "response": "v", "score": 2, "weight": 0.4}])
    assert [w for g in groups for *_, w in g.pairs] == [3.0, 1.0, pytest.approx(0.2)]
    prompts, responses, offsets = flatten(groups)
    rewards = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # p right by 2, q wrong by 1, r level
    loss, _ = batch_loss(rewards, groups, offsets, use_margin=False)
    want = (3 * math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0)) + 0.2 * math.log(2)) / 4.2
    assert float(loss) == pytest.approx(want)
    # regression: a response's target is its ratings' weighted mean, weighted by their mean weight
    reg = build_groups([{"prompt": "r", "response": "u", "score": 6, "weight": 0.5},
                        {"prompt": "r", "response": "u", "score": 2, "weight": 1.5},
                        {"prompt": "r", "response": "v", "score": 4}], "regression")
    (g,) = reg
    z = {r: (s - 4) / math.sqrt(8 / 3) for r, s in (("u6", 6), ("u2", 2))}
    pred = torch.tensor([0.0, 0.0])
    loss, _ = batch_loss(pred, reg, [0], use_margin=False)
    u_target = (0.5 * z["u6"] + 1.5 * z["u2"]) / 2.0
    assert float(loss) == pytest.approx((1.0 * u_target**2 + 1.0 * 0.0**2) / 2.0)


@pytest.mark.parametrize("weight", [0, -1, "2", True])
def test_a_weight_that_is_not_a_positive_number_is_refused_with_file_line_and_field(tmp_path, weight):
    path = tmp_path / "fb.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "weight": weight}) + "\n")
    with pytest.raises(RecordError, match=re.escape(f"{path}:2: weight: expected a number")):
        read_records(path, "auto")


def token_preference_data(tmp_path, n_prompts=120, k=2, seed=0):
    """Rankings of k where the response containing "excellent" is best (k=2: each record is one pair)."""
    rng = random.Random(seed)
    recs = []
    for i in range(n_prompts):
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(k)]
        words = responses[0].split()
        words.insert(rng.randint(0, len(words)), "excellent")
        responses[0] = " ".join(words)
        order = list(range(k))
        rng.shuffle(order)
        shown = [responses[j] for j in order]
        best = order.index(0)
        rest = [j for j in range(k) if j != best]
        recs.append({"prompt": f"Review {i}: {rng.choice(WORDS)}", "responses": shown, "ranking": [best, *rest]})
    return write_jsonl(tmp_path / "prefs.jsonl", recs)


def rm_cfg(data, out, **kw) -> RewardConfig:
    base = dict(model="tiny-minilm", data=str(data), output=str(out), max_steps=60, batch_size=8, lr=2e-3,
                warmup_steps=3, eval_fraction=0.25, eval_every=0, save_every=0, report_to="none", threads=1, max_len=32)
    base.update(kw)
    return RewardConfig(**base)


def token_preference_accuracy(tmp_path, seed: int = 0) -> float:
    """Held-out pair accuracy of a tiny reward model trained 60 steps on the token-preference data."""
    last = train_reward(rm_cfg(token_preference_data(tmp_path), tmp_path / "rm", seed=seed))
    return last["eval_accuracy"]


def test_a_tiny_reward_model_learns_a_token_preference_to_95_percent_held_out(tmp_path):
    assert token_preference_accuracy(tmp_path) >= 0.95
    data = tmp_path / "prefs.jsonl"
    rows = read_metrics(tmp_path / "rm" / "metrics.jsonl")
    assert {"loss", "accuracy", "time_step_s", "eval_accuracy", "eval_loss", "reward_gap"} <= set(rows[-1])
    assert rows[-1]["loss"] < rows[0]["loss"]
    # The run folder: a plain transformers classifier with one label, normalisation stats, the split.
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_labels == 1
    stats = json.loads((tmp_path / "rm" / "reward_stats.json").read_text())
    assert set(stats) == {"mean", "std", "n", "policy"} and stats["n"] == 120 * 2  # every response (≤ stats_samples)
    held = {json.dumps(p, sort_keys=True) for p in json.loads((tmp_path / "rm" / "split.json").read_text())["eval_prompts"]}
    assert len(held) == 30
    # The scorer reproduces the stats on the same responses: normalised scores have mean 0, std 1.
    scorer = RewardScorer.load(tmp_path / "rm")
    groups = build_groups([json.loads(x) for x in data.read_text().splitlines()])
    prompts, responses, _ = flatten(groups)
    z = scorer.normalize(scorer.score(prompts, responses))
    assert z.shape == (240,) and float(z.mean()) == pytest.approx(0.0, abs=1e-3) and float(z.std()) == pytest.approx(1.0, abs=1e-3)
    assert float(scorer.score([{"prompt": "Review: x"}], ["an excellent film"])[0]) > float(scorer.score([{"prompt": "Review: x"}], ["a film"])[0])
    # Plain transformers on the saved folder: a padded batch scores each pair as it scores alone ([CLS] stays at
    # position 0, so the saved tokenizer pads on the right), and as rlhfkit's scorer does.
    plain = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert plain.padding_side == "right"
    texts = (["Review 1: x", "Review 2: a much longer opening of a review"], ["an excellent film", "a film"])
    with torch.no_grad():
        batch = model(**plain(*texts, padding=True, return_tensors="pt")).logits[:, 0]
        alone = torch.cat([model(**plain(p, r, return_tensors="pt")).logits[:, 0] for p, r in zip(*texts)])
    assert torch.allclose(batch, alone, atol=1e-5)
    assert torch.allclose(scorer.score([{"prompt": p} for p in texts[0]], list(texts[1])), alone, atol=1e-5)


def test_lora_on_a_causal_lm_backbone_is_merged_into_a_plain_classifier(tmp_path):
    data = token_preference_data(tmp_path, n_prompts=24)
    last = train_reward(rm_cfg(data, tmp_path / "rm", model="tiny", lora=True, lr=5e-3, max_steps=8, lora_r=4))
    assert not (tmp_path / "rm" / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.pad_token_id == load_tokenizer("tiny").pad_token_id
    scorer = RewardScorer.load(tmp_path / "rm")
    # The saved (merged) model reproduces the held-out metrics measured on the adapter model during training.
    held = build_groups([json.loads(x) for x in data.read_text().splitlines()])
    held = [g for g in held if prompt_key(g.prompt) in {prompt_key(p) for p in json.loads((tmp_path / "rm" / "split.json").read_text())["eval_prompts"]}]
    ev = reward.evaluate_groups(lambda p, r: scorer.score(p, r), held)
    assert ev["loss"] == pytest.approx(last["eval_loss"], abs=1e-4)


def test_trainable_layers_keeps_the_embeddings_and_lower_layers_frozen():
    model = build_reward_model(RewardConfig(model="tiny-minilm", trainable_layers=1), None)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for n in trained)
    assert "classifier.weight" in trained


def test_reward_stats_can_come_from_a_policy_s_own_samples(tmp_path):
    data = token_preference_data(tmp_path, n_prompts=8)
    train_reward(rm_cfg(data, tmp_path / "rm", max_steps=2, stats_policy="tiny", stats_samples=5, stats_max_new_tokens=4))
    stats = json.loads((tmp_path / "rm" / "reward_stats.json").read_text())
    assert stats["policy"] == "tiny" and stats["n"] == 5 and stats["std"] > 0


def test_resume_after_interruption_matches_an_unbroken_run(tmp_path, monkeypatch):
    data = token_preference_data(tmp_path, n_prompts=32)
    train_reward(rm_cfg(data, tmp_path / "full", max_steps=10))
    calls = {"n": 0}
    real = reward_model.reward_forward

    def interrupt_at_step_7(model, inputs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(model, inputs)

    monkeypatch.setattr(reward_model, "reward_forward", interrupt_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_reward(rm_cfg(data, tmp_path / "part", max_steps=10, save_every=4))
    monkeypatch.setattr(reward_model, "reward_forward", real)
    train_reward(rm_cfg(data, tmp_path / "part", max_steps=10, resume=True))
    losses = [[r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")] for name in ("full", "part")]
    assert len(losses[1]) == 10 and losses[1] == pytest.approx(losses[0], abs=1e-5)


def test_a_model_loaded_from_a_checkpoint_scores_bit_for_bit_as_the_one_that_saved_it(tmp_path):
    # Issue #24: transformers leaves loaded weights in a memory map of the safetensors file, where
    # classifier.weight sits 4 bytes past a 64-byte boundary, and MKL's product with such an operand sums in
    # another order: a resumed run's held-out reward_gap differed in its ninth decimal from the unbroken run's.
    cfg = RewardConfig(model="tiny-minilm")
    tok, model = load_tokenizer("tiny-minilm"), build_reward_model(cfg, None)
    model.save_pretrained(tmp_path / "checkpoint" / "model")
    tok.save_pretrained(tmp_path / "checkpoint" / "model")
    resumed, scorer = build_reward_model(cfg, tmp_path / "checkpoint"), RewardScorer.load(tmp_path / "checkpoint" / "model")
    prompts = [{"prompt": f"Review {i}"} for i in range(16)]
    responses = [" ".join(WORDS[i:i + 1 + i % 5]) for i in range(16)]
    for n in range(1, 17):  # MKL takes the order-changing path for some batch sizes only
        want = score_texts(model, tok, prompts[:n], responses[:n], 512, n)
        assert torch.equal(score_texts(resumed, tok, prompts[:n], responses[:n], 512, n), want), n
        assert torch.equal(scorer.score(prompts[:n], responses[:n], n), want), n


def test_malformed_feedback_is_reported_with_file_line_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                              {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 5]}])
    with pytest.raises(RecordError, match=r"bad.jsonl:2: ranking\[1\]: expected an index in 0..1, got 5"):
        train_reward(rm_cfg(bad, tmp_path / "rm"))


def test_a_non_finite_loss_stops_training_before_the_update_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    data = token_preference_data(tmp_path, n_prompts=16)
    real, calls = reward.batch_loss, {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan"), {**metrics, "loss": float("nan")}) if calls["n"] == 3 else (loss, metrics)

    monkeypatch.setattr(reward, "batch_loss", nan_at_step_3)
    out = tmp_path / "rm"
    with pytest.raises(reward.RewardHealthError, match="^step 3: loss, grad_norm is NaN/inf: stopped before updating"):
        train_reward(rm_cfg(data, out, max_steps=4, save_every=2))
    assert load_state(out / "checkpoint")[0]["step"] == 2
    assert all(w.isfinite().all() for w in load_file(out / "checkpoint" / "model" / "model.safetensors").values())
    assert not (out / "model.safetensors").exists() and not (out / "reward_stats.json").exists()


def test_stats_with_nan_are_refused_when_a_reward_model_loads(tmp_path):
    stats = tmp_path / "reward_stats.json"
    stats.write_text('{"mean": 0.5, "std": NaN, "n": 4, "policy": "data"}')  # as older versions wrote them
    with pytest.raises(RecordError, match=f"^{stats}: std: expected a finite number, got NaN$"):
        load_stats(stats)


def test_rm_eval_on_feedback_without_pairs_is_an_error_not_a_nan_accuracy(tmp_path):
    ties = write_jsonl(tmp_path / "ties.jsonl", [{"prompt": "p", "response": "a", "score": 3},
                                                 {"prompt": "p", "response": "b", "score": 3}])
    with pytest.raises(RecordError, match=f"^{ties}: no pairs to evaluate"):
        reward.eval_file("tiny-minilm", str(ties))


def test_cli_train_eval_and_score(tmp_path):
    data = token_preference_data(tmp_path, n_prompts=16)
    out = tmp_path / "rm"
    cli("rm", "train", "--model", "tiny-minilm", "--data", str(data), "--output", str(out), "--max-steps", "3",
         "--batch-size", "4", "--report-to", "none", "--set", "max_len=32")
    assert (out / "config.yaml").exists() and (out / "checkpoint").is_dir() and len(read_metrics(out / "metrics.jsonl")) == 3
    result = json.loads(cli("rm", "eval", "--model", str(out), "--data", str(data)))
    assert result["n_pairs"] == 16 and 0.0 <= result["accuracy"] <= 1.0 and "reward_gap" in result
    cands = write_jsonl(tmp_path / "cand.jsonl", [{"prompt": "p", "responses": ["one", "two words"]}])
    summary = json.loads(cli("rm", "score", "--model", str(out), "--data", str(cands), "--output", str(tmp_path / "s.jsonl")))
    assert summary["n"] == 2
    assert len(json.loads((tmp_path / "s.jsonl").read_text())["rewards"]) == 2
    gold = json.loads(cli("rm", "eval", "--model", str(out), "--data", str(cands), "--judge", "length"))
    assert gold["n_pairs"] == 1


def test_bf16_autocast_reward_training_learns_the_preference_and_saves_fp32_weights(tmp_path):
    data = token_preference_data(tmp_path)
    last = train_reward(rm_cfg(data, tmp_path / "rm", precision="bf16"))
    assert last["eval_accuracy"] >= 0.9, last
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_ctrl_c_during_evaluation_saves_the_step_just_taken_and_resume_repeats_nothing(tmp_path, monkeypatch, python_ctrl_c):
    data = token_preference_data(tmp_path, n_prompts=32)
    kw = dict(max_steps=8, eval_every=2)
    check_ctrl_c_during_evaluation(monkeypatch, tmp_path, train_reward, lambda out, **more: rm_cfg(data, out, **kw, **more),
                                   reward, "evaluate_groups", saved_step=4, weights="model.safetensors")
