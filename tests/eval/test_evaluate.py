import json

from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.eval.evaluate import parse_model_arg, response_logprobs, unique_labels
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from tests.conftest import write_jsonl

ROW_KEYS = {"name", "spec", "is_reference", "n", "rm_score", "gold_score", "kl", "kl_method", "win_rate_rm",
            "win_rate_gold", "bleu", "rouge1", "rouge2", "rougeL", "ppl", "eval_loss", "response_len",
            "response_words", "distinct_1", "distinct_2", "no_eos_frac"}


def test_rlhf_eval_on_two_identical_tiny_checkpoints_writes_eval_json_with_every_metric(tmp_path):
    prompts = write_jsonl(tmp_path / "eval.jsonl", [
        {"prompt": f"Tell me about topic number {i}.", "reference": f"Topic {i} is a fine topic."} for i in range(4)
    ])
    sft = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "Say hi.", "completion": "Hi there."}] * 2)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--model", "before=tiny", "--model", "tiny", "--prompts", str(prompts),
                                   "--output", str(out), "--judge", "length", "--sft-data", str(sft),
                                   "--max-new-tokens", "6", "--set", "bootstrap=200"])
    assert res.exit_code == 0, res.output
    ev = json.loads((out / "eval.json").read_text())
    assert {"prompts", "n_prompts", "reference", "judge", "models", "skipped"} <= set(ev)
    assert ev["n_prompts"] == 4 and ev["judge"] == "length" and ev["reference"] == "tiny"
    assert [m["name"] for m in ev["models"]] == ["before", "tiny"]
    for row in ev["models"]:
        assert ROW_KEYS <= set(row)
        # The same weights sampled with the same seed give the same answers: no KL, every comparison a tie.
        assert row["kl"] == 0.0
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


def test_model_arguments_take_an_optional_label_and_duplicate_labels_are_numbered():
    assert parse_model_arg("ppo=runs/x/ppo") == ("ppo", "runs/x/ppo")
    assert parse_model_arg("runs/x/ppo") == ("runs/x/ppo", "runs/x/ppo")
    assert unique_labels(["tiny", "tiny", "sft"]) == ["tiny", "tiny#2", "sft"]
