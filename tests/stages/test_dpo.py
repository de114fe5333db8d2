import json
import random

import pytest
import yaml

import rlhfkit.stages.dpo as dpo
from rlhfkit.config import ConfigError, DPOConfig
from rlhfkit.data.groups import build_groups
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.stages.dpo import encode_pairs, train_dpo
from rlhfkit.tracking import read_metrics
from tests.conftest import check_ctrl_c_during_evaluation, write_jsonl

WORDS = "the a film story plot actor scene music ending camera light night day city house road water tree".split()


def token_pairs(tmp_path, n: int = 60, seed: int = 0):
    """Pairs whose chosen answer ends in "excellent" and rejected one in "boring", the rest the same."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        base = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
        recs.append({"prompt": f"Review {i}: {rng.choice(WORDS)}", "chosen": f"{base} excellent", "rejected": f"{base} boring"})
    return write_jsonl(tmp_path / "pairs.jsonl", recs)


def dpo_cfg(data, out, **kw) -> DPOConfig:
    base = dict(model="tiny", data=str(data), output=str(out), max_steps=30, batch_size=8, lr=1e-3, eval_fraction=0.2,
                eval_every=10, save_every=0, report_to="none", threads=1)
    base.update(kw)
    return DPOConfig(**base)


@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_teaches_a_tiny_policy_the_preferred_word_on_held_out_prompts(tmp_path, seed):
    train_dpo(dpo_cfg(token_pairs(tmp_path, seed=seed), tmp_path / "dpo", seed=seed))
    log = read_metrics(tmp_path / "dpo" / "metrics.jsonl")
    assert {"loss", "reward_chosen", "reward_rejected", "reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected",
            "implicit_kl", "eval_loss", "eval_reward_accuracy", "eval_reward_margin"} <= set(log[-1])
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as the reference: h = 0
    assert log[-1]["eval_reward_accuracy"] == 1.0 and log[-1]["eval_loss"] < 0.65 and log[-1]["eval_reward_margin"] > 0.1
    assert (tmp_path / "dpo" / "adapter_config.json").exists() and (tmp_path / "dpo" / "merged" / "config.json").exists()


def test_every_feedback_kind_becomes_pairs_as_the_reward_model_reads_them(tmp_path):
    recs = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},  # 3 ordered pairs
            {"prompt": "q", "response": "x", "score": 6}, {"prompt": "q", "response": "y", "score": 2},  # 1 pair
            {"prompt": "r", "response": "meh", "edited": "much better"},  # edited ≻ original
            {"prompt": "s", "chosen": "yes", "rejected": "no"}]
    cfg = dpo_cfg(write_jsonl(tmp_path / "fb.jsonl", recs), tmp_path / "out")
    tok = load_tokenizer("tiny")
    pairs = encode_pairs(tok, build_groups(recs), cfg)
    assert len(pairs) == 6
    c_ids = tok("c", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert pairs[0].chosen == c_ids  # the ranking's best first
    train_dpo(dpo_cfg(cfg.data, tmp_path / "out", max_steps=2, eval_fraction=0.0))
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl")] == [1, 2]


def test_full_fine_tuning_uses_a_frozen_reference_and_ipo_moves_towards_its_target(tmp_path):
    train_dpo(dpo_cfg(token_pairs(tmp_path), tmp_path / "ipo", lora=False, lr=1e-4, loss_type="ipo", beta=0.5, max_steps=20))
    log = read_metrics(tmp_path / "ipo" / "metrics.jsonl")
    assert log[0]["loss"] == pytest.approx(1.0, abs=1e-3)  # (0 − 1/(2β))² with β = 0.5
    assert log[-1]["eval_loss"] < 0.9 and log[-1]["eval_reward_accuracy"] == 1.0
    assert (tmp_path / "ipo" / "model.safetensors").exists()


def test_rpo_adds_the_chosen_answer_s_nll_and_raises_its_likelihood_more_than_dpo_alone(tmp_path):
    """rpo_alpha α: the loss at step 1 is log 2 + α × the chosen answers' NLL per token (the policy starts as the
    reference), and the chosen answers' log-probs rise above where DPO alone leaves them. Both runs draw the same
    batches step by step, so each step's logp_chosen compares the same answers (measured: RPO 0.5 nats above
    DPO by step 12 on seeds 0 and 1)."""
    data = token_pairs(tmp_path)
    train_dpo(dpo_cfg(data, tmp_path / "dpo", max_steps=12, eval_every=0))
    train_dpo(dpo_cfg(data, tmp_path / "rpo", max_steps=12, eval_every=0, rpo_alpha=1.0))
    dpo_log, rpo_log = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("dpo", "rpo"))
    assert dpo_log[0]["logp_chosen"] == pytest.approx(rpo_log[0]["logp_chosen"], abs=1e-5)
    assert rpo_log[0]["loss"] > dpo_log[0]["loss"] + 5.0  # log 2 + the NLL per token of random-model answers (~10.8)
    assert all(r["logp_chosen"] >= d["logp_chosen"] - 1e-3 for r, d in zip(rpo_log, dpo_log))
    assert rpo_log[-1]["logp_chosen"] > dpo_log[-1]["logp_chosen"] + 0.25
    with pytest.raises(ConfigError, match="rpo_alpha"):
        train_dpo(dpo_cfg(data, tmp_path / "bad", rpo_alpha=-1.0))
    with pytest.raises(ConfigError, match="rpo_alpha.*kto"):
        train_dpo(dpo_cfg(data, tmp_path / "bad", rpo_alpha=1.0, loss_type="kto"))


def test_no_pairs_is_an_error_that_names_the_file(tmp_path):
    from rlhfkit.data.formats import RecordError

    data = write_jsonl(tmp_path / "ties.jsonl", [{"prompt": "p", "response": "a", "edited": "a"}])
    with pytest.raises(RecordError, match="ties.jsonl.*no preference pairs"):
        train_dpo(dpo_cfg(data, tmp_path / "out"))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "kto"])
def test_ctrl_c_during_evaluation_saves_the_step_just_taken_and_resume_repeats_nothing(loss_type, tmp_path, monkeypatch,
                                                                                       python_ctrl_c):
    data = token_pairs(tmp_path, n=30)
    check_ctrl_c_during_evaluation(monkeypatch, tmp_path, train_dpo,
                                   lambda out, **more: dpo_cfg(data, out, max_steps=8, eval_every=2, loss_type=loss_type, **more),
                                   dpo, "evaluate", saved_step=4, weights="adapter_model.safetensors")


def test_cli_dpo_trains_from_a_feedback_file(tmp_path):
    from tests.stages.test_reward_model import cli

    data = token_pairs(tmp_path, n=16)
    cli("dpo", "--model", "tiny", "--data", str(data), "--output", str(tmp_path / "cli"), "--max-steps", "2", "--beta", "0.2",
        "--report-to", "none")
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["beta"] == 0.2 and saved["model"] == "tiny" and len(read_metrics(tmp_path / "cli" / "metrics.jsonl")) == 2


def test_a_time_budget_stops_after_the_step_that_leaves_no_room_and_saves_the_policy(tmp_path):
    train_dpo(dpo_cfg(token_pairs(tmp_path, n=20), tmp_path / "out", time_budget_minutes=1e-4))
    log = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1] and "eval_loss" in log[-1]  # evaluated before it stopped
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_held_out_answers_are_scored_by_the_gold_judge_before_during_and_after_training(tmp_path):
    prompts = write_jsonl(tmp_path / "eval_prompts.jsonl", [{"prompt": f"Review {i}: film"} for i in range(6)])
    data = token_pairs(tmp_path, n=24)
    train_dpo(dpo_cfg(data, tmp_path / "out", max_steps=6, eval_every=3, eval_prompts=str(prompts), eval_judge="length",
                      eval_max_new_tokens=8))
    log = read_metrics(tmp_path / "out" / "metrics.jsonl")
    evaluated = [r for r in log if "eval/gold_score" in r]
    assert [r["step"] for r in evaluated] == [0, 3, 6]
    assert evaluated[0]["eval/kl"] == pytest.approx(0.0, abs=1e-6)  # step 0: LoRA's B = 0, the policy is the reference
    assert evaluated[-1]["eval/kl"] != evaluated[0]["eval/kl"]  # trained: the answers' log-probs moved off the reference's
    assert all(0.0 <= r["eval/gold_score"] for r in evaluated) and "eval/rm_score" not in evaluated[0]
    assert "eval_loss" in evaluated[-1]  # the held-out pairs too
    with pytest.raises(ConfigError, match="eval_judge or eval_reward"):
        train_dpo(dpo_cfg(data, tmp_path / "bad", eval_prompts=str(prompts)))


def test_a_budget_that_leaves_out_the_evaluations_trains_past_one_that_counts_them(tmp_path, monkeypatch):
    """A held-out evaluation as long as the whole budget: counted, it leaves room for one step; left out, the
    steps get the budget to themselves."""
    import time

    def slow_eval(*a, **k):
        time.sleep(3.0)
        return {"eval/gold_score": 0.0, "eval/kl": 0.0}

    monkeypatch.setattr(dpo, "held_out_eval", slow_eval)
    prompts = write_jsonl(tmp_path / "eval_prompts.jsonl", [{"prompt": "Review: film"}])
    data = token_pairs(tmp_path, n=24)
    steps = {}
    for counts in (True, False):
        out = tmp_path / f"counts-{counts}"
        train_dpo(dpo_cfg(data, out, max_steps=1000, eval_every=0, eval_fraction=0.0, eval_prompts=str(prompts),
                          eval_judge="length", time_budget_minutes=0.05, time_budget_counts_eval=counts))
        steps[counts] = read_metrics(out / "metrics.jsonl")[-1]["step"]
    assert steps[True] == 1 and steps[False] > 1


def test_a_records_weight_decides_which_of_two_conflicting_preferences_dpo_learns(tmp_path):
    """Half the pairs prefer "excellent", half (on other prompts) "boring"; the weights alone say which half counts."""
    (tmp_path / "held").mkdir()
    held = token_pairs(tmp_path / "held", n=12, seed=7)  # every one "excellent ≻ boring"
    good = [json.loads(line) for line in token_pairs(tmp_path, n=60, seed=0).read_text().splitlines()]
    bad = [{**r, "prompt": r["prompt"] + " (other)", "chosen": r["rejected"], "rejected": r["chosen"]} for r in good]
    margins = {}
    for name, w_good, w_bad in (("good", 1.0, 0.02), ("bad", 0.02, 1.0)):
        data = write_jsonl(tmp_path / f"{name}.jsonl", [{**r, "weight": w_good} for r in good] + [{**r, "weight": w_bad} for r in bad])
        train_dpo(dpo_cfg(data, tmp_path / name, eval_data=str(held), eval_every=0))
        margins[name] = read_metrics(tmp_path / name / "metrics.jsonl")[-1]["eval_reward_margin"]  # on "excellent ≻ boring"
    assert margins["good"] > 0.05 and margins["bad"] < -0.05, margins


def test_unpaired_answers_from_every_feedback_kind_for_kto():
    from rlhfkit.stages.dpo import unpaired_answers

    recs = [{"prompt": "p", "response": "good", "score": 1.0, "label": True},  # an unpaired record, read as a rating
            {"prompt": "p", "response": "bad", "score": 0.0, "label": False},
            {"prompt": "q", "response": "fine", "score": 5}, {"prompt": "q", "response": "poor", "score": 2},
            {"prompt": "r", "chosen": "yes", "rejected": "no", "weight": 0.5},
            {"prompt": "s", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}]
    got = [(p["prompt"], text, good, w) for p, text, good, w in unpaired_answers(recs, desirable_rating=4.0)]
    assert got[:5] == [("p", "good", True, 1.0), ("p", "bad", False, 1.0), ("q", "fine", True, 1.0),
                       ("q", "poor", False, 1.0), ("r", "yes", True, 0.5)]
    assert got[5] == ("r", "no", False, 0.5) and len(got) == 6 + 2 * 3  # the ranking's 3 ordered pairs unpaired


def unpaired_file(tmp_path, n: int = 60, seed: int = 0):
    """Unpaired (KTO-shaped) records: answers ending in "excellent" labelled true, in "boring" false, on separate
    prompts (no pair shares a prompt)."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        base = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
        good = i % 2 == 0
        recs.append({"prompt": f"Review {i}: {rng.choice(WORDS)}", "completion": f"{base} {'excellent' if good else 'boring'}",
                     "label": good})
    return write_jsonl(tmp_path / "unpaired.jsonl", recs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kto_teaches_a_tiny_policy_the_desirable_word_from_unpaired_labels(tmp_path, seed):
    # β 0.5: KTO's gradient is β·σ'(β·(r − z₀))-scaled, and at β 0.1 thirty steps barely move the held-out answers
    train_dpo(dpo_cfg(unpaired_file(tmp_path, seed=seed), tmp_path / "kto", loss_type="kto", seed=seed, beta=0.5))
    log = read_metrics(tmp_path / "kto" / "metrics.jsonl")
    assert {"loss", "reward_desirable", "reward_undesirable", "reward_margin", "reward_accuracy", "kl", "eval_loss",
            "eval_reward_margin", "eval_reward_accuracy"} <= set(log[-1])
    assert log[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # the policy starts as the reference: r = z₀ = 0, 1 − σ(0)
    # held-out prompts: the desirable answers' rewards rise above the undesirable ones' (seeds 0–2 measured: margins
    # 0.66–1.02, losses 0.38–0.43; the sign accuracy against z₀ = 0 is 0.67–0.92 on 12 answers, too coarse for a bar)
    assert log[-1]["eval_reward_margin"] > 0.3 and log[-1]["eval_loss"] < 0.47
