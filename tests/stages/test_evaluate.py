import json

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.stages.evaluate import best_of_indices, model_list, parse_model_arg, response_logprobs, unique_labels
from tests.conftest import write_jsonl

ROW_KEYS = {"name", "spec", "is_reference", "n", "rm_score", "gold_score", "kl", "kl_method", "win_rate_rm",
            "win_rate_gold", "bleu", "rouge1", "rouge2", "rougeL", "ppl", "eval_loss", "response_len",
            "response_words", "distinct_1", "distinct_2", "no_eos_frac"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rlhf_eval_on_two_identical_tiny_checkpoints_writes_eval_json_with_every_metric(tmp_path, precision):
    # The second checkpoint is the tiny model saved to a folder: loaded, sampled and scored like any other.
    copy = tmp_path / "tiny-copy"
    load_causal_lm("tiny").save_pretrained(copy)
    load_tokenizer("tiny").save_pretrained(copy)
    prompts = write_jsonl(tmp_path / "eval.jsonl", [
        {"prompt": f"Tell me about topic number {i}.", "reference": f"Topic {i} is a fine topic."} for i in range(4)
    ])
    sft = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "Say hi.", "completion": "Hi there."}] * 2)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--model", "before=tiny", "--model", str(copy), "--prompts", str(prompts),
                                   "--output", str(out), "--judge", "length", "--sft-data", str(sft),
                                   "--max-new-tokens", "6", "--set", "bootstrap=200", "--set", f"precision={precision}"])
    assert res.exit_code == 0, res.output
    ev = json.loads((out / "eval.json").read_text())
    assert {"prompts", "n_prompts", "reference", "judge", "models", "skipped"} <= set(ev)
    assert ev["n_prompts"] == 4 and ev["judge"] == "length" and ev["reference"] == "tiny"
    assert [m["name"] for m in ev["models"]] == ["before", str(copy)]
    assert [m["is_reference"] for m in ev["models"]] == [True, False]
    for row in ev["models"]:
        assert ROW_KEYS <= set(row)
        # The same weights sampled with the same seed give the same answers: no KL, every comparison a tie.
        assert abs(row["kl"]) < 1e-4 and row["kl_method"] == "sampled"
        assert row["win_rate_gold"]["win_rate"] == 0.5 and row["win_rate_gold"]["ties"] == 4
        assert row["win_rate_gold"]["len_model"] == row["win_rate_gold"]["len_reference"] == row["response_len"]
        assert row["gold_score"] is not None and row["bleu"] is not None and row["ppl"] > 1
        assert 0 <= row["distinct_1"] <= 1 and row["no_eos_frac"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert ev["models"][0]["rm_score"] is None and "rm_score" in ev["skipped"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {"prompt", "model", "response", "gold_score"} <= set(samples[0])


def test_response_log_probs_cover_each_answer_token_and_do_not_depend_on_batching():
    tok = load_tokenizer("tiny")
    model = load_causal_lm("tiny")
    prompts = [[1, 5, 7, 9], [1, 4]]
    answers = [[11, 12, 13], [14]]
    lp = response_logprobs(model, prompts, answers, 0.7, 2, tok.pad_token_id)
    assert [len(x) for x in lp] == [3, 1]
    assert all(v < 0 for row in lp for v in row)
    # Batched (right-padded) log-probs equal one-at-a-time ones.
    single = response_logprobs(model, prompts[1:], answers[1:], 0.7, 1, tok.pad_token_id)
    assert abs(single[0][0] - lp[1][0]) < 1e-4
    # Each equals log softmax(logits / T) of the whole unpadded sequence (logits are made for the answer columns only).
    with torch.no_grad():
        for p, a, row in zip(prompts, answers, lp):
            logits = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1] / 0.7
            want = torch.log_softmax(logits, -1).gather(1, torch.tensor(a)[:, None]).squeeze(1)
            assert row == pytest.approx(want.tolist(), abs=1e-4)
    # An empty answer has no log-probs, beside others or alone.
    assert [len(x) for x in response_logprobs(model, prompts, [[], [14]], 0.7, 2, tok.pad_token_id)] == [0, 1]
    assert response_logprobs(model, [[1, 4]], [[]], 0.7, 2, tok.pad_token_id) == [[]]


def test_model_arguments_take_an_optional_label_and_duplicate_labels_are_numbered():
    assert parse_model_arg("ppo=runs/x/ppo") == ("ppo", "runs/x/ppo")
    assert parse_model_arg("runs/x/ppo") == ("runs/x/ppo", "runs/x/ppo")
    assert unique_labels(["tiny", "tiny", "sft"]) == ["tiny", "tiny#2", "sft"]


def test_the_reference_defaults_to_the_first_model_and_is_listed_first_when_not_among_them():
    assert model_list(["sft=a", "ppo=b"], None) == ("a", [("sft", "a"), ("ppo", "b")])
    assert model_list(["ppo=b"], "a") == ("a", [("reference", "a"), ("ppo", "b")])
    assert model_list(["ppo=b", "sft=a"], "a") == ("a", [("ppo", "b"), ("sft", "a")])


def test_best_of_n_picks_the_highest_score_in_each_prompts_group():
    assert best_of_indices([0.1, 0.9, 0.5, 2.0, -1.0, 2.0], 3) == [1, 3]
    assert best_of_indices([3.0, 1.0], 1) == [0, 1]


def test_best_of_n_baseline_is_evaluated_beside_the_reference_with_its_analytic_kl(tmp_path):
    from rlhfkit.config import EvalConfig
    from rlhfkit.models.reward import RewardScorer
    from rlhfkit.stages.evaluate import evaluate_models

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(3)])
    cfg = EvalConfig(models=["tiny"], prompts=str(prompts), output=str(tmp_path / "eval"), reward="tiny",
                     judge="length", best_of=3, max_new_tokens=5, bootstrap=100)
    ev = evaluate_models(cfg)
    ref, best = ev["models"]
    assert best["name"] == "best-of-3" and best["best_of"] == 3 and best["kl_method"].startswith("analytic")
    # Picking the best of 3 by the reward model can only match or beat a single sample on that reward model.
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    kept = [s["response"] for s in samples if s["model"] == "best-of-3"]
    scorer = RewardScorer.load("tiny")
    rm = scorer.score([{"prompt": f"Question {i}?"} for i in range(3)], kept).tolist()
    assert [round(x, 4) for x in rm] == [round(s["rm_score"], 4) for s in samples if s["model"] == "best-of-3"]
    assert ref["win_rate_rm"]["win_rate"] == 0.5 and "rm_score" not in ev["skipped"]


def test_under_a_greedy_eval_the_best_of_n_baseline_still_samples_its_n(tmp_path):
    from rlhfkit.config import EvalConfig
    from rlhfkit.stages.evaluate import evaluate_models

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(3)])
    cfg = EvalConfig(models=["tiny"], prompts=str(prompts), output=str(tmp_path / "eval"), reward="tiny",
                     judge="length", best_of=3, max_new_tokens=5, bootstrap=100, temperature=0.0)
    ev = evaluate_models(cfg)
    assert ev["temperature"] == 0.0 and [m["name"] for m in ev["models"]] == ["tiny", "best-of-3"]
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    greedy = [s["response"] for s in samples if s["model"] == "tiny"]
    best = [s["response"] for s in samples if s["model"] == "best-of-3"]
    assert greedy != best  # three greedy answers would have been the greedy answer itself


def test_several_answers_per_prompt_are_sampled_scored_and_compared_prompt_by_prompt(tmp_path):
    from rlhfkit.config import EvalConfig
    from rlhfkit.stages.evaluate import evaluate_models

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(3)])
    cfg = EvalConfig(models=["tiny"], prompts=str(prompts), output=str(tmp_path / "eval"), reward="tiny",
                     judge="length", best_of=2, samples_per_prompt=4, max_new_tokens=5, bootstrap=100)
    ev = evaluate_models(cfg)
    assert ev["n_prompts"] == 3 and ev["samples_per_prompt"] == 4
    ref, best = ev["models"]
    assert ref["n"] == best["n"] == 12
    assert best["win_rate_rm"]["n"] == 12 and best["win_rate_rm"]["n_prompts"] == 3
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    ref_rows = [s for s in samples if s["model"] == "tiny"]
    assert [(s["index"], s["sample"]) for s in ref_rows] == [(i, j) for i in range(3) for j in range(4)]
    assert all(s["prompt"] == f"Question {s['index']}?" for s in samples)
    # Four samples of a prompt at temperature 0.7 are not all the same answer.
    assert len({s["response"] for s in ref_rows}) > 3
    # The mean gold score is the mean over every answer.
    assert ref["gold_score"] == pytest.approx(sum(s["gold_score"] for s in ref_rows) / 12)
    with pytest.raises(Exception, match="samples_per_prompt"):
        evaluate_models(EvalConfig(models=["tiny"], prompts=str(prompts), output=str(tmp_path / "e2"), samples_per_prompt=0))
