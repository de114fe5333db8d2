import json

from rlhfkit.config import SampleConfig
from rlhfkit.data.formats import read_records
from rlhfkit.stages.sample import sample_candidates
from tests.conftest import write_jsonl
from tests.stages.test_reward_model import cli

PROMPTS = [
    {"prompt": "The movie was", "topic": "film"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
     "keywords": ["light", "air"]},
    {"prompt": "The food at this place"},
]


def cfg(tmp_path, **kw) -> SampleConfig:
    base = dict(model="tiny", prompts=str(tmp_path / "prompts.jsonl"), output=str(tmp_path / "cand.jsonl"), k=3,
                max_new_tokens=6, temperature=1.0, batch_size=2, seed=7, threads=1)
    base.update(kw)
    return SampleConfig(**base)


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_sample_writes_k_responses_per_prompt_with_model_sampling_and_extra_fields(tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    assert sample_candidates(cfg(tmp_path)) == 3
    rows = lines(tmp_path / "cand.jsonl")
    assert [r.get("prompt") for r in rows] == ["The movie was", None, "The food at this place"]
    assert rows[1]["messages"] == PROMPTS[1]["messages"] and rows[1]["keywords"] == ["light", "air"]
    assert rows[0]["topic"] == "film"
    for r in rows:
        assert len(r["responses"]) == 3 and all(isinstance(x, str) for x in r["responses"])
        assert r["model"] == "tiny" and r["checkpoint"] == "tiny"
        assert r["sampling"] == {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 6, "seed": 7}
    assert len(set(rows[0]["responses"])) > 1  # sampled, not K copies of one answer
    read_records(tmp_path / "cand.jsonl", "prompt")  # valid prompt records for the next stages


def test_each_batch_logs_its_seconds_rows_prompt_width_and_the_token_steps_it_ran(tmp_path):
    """What the budget judges the machine's decoding speed by (stages/budget.py, decoding_ratio)."""
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    sample_candidates(cfg(tmp_path, metrics=str(tmp_path / "sample" / "metrics.jsonl")))
    batches = lines(tmp_path / "sample" / "metrics.jsonl")
    assert [b["step"] for b in batches] == [1, 2] and [b["rows"] for b in batches] == [6, 3]  # 2 prompts × k=3, then 1
    assert all(b["time_step_s"] > 0 and 1 <= b["decode_steps"] <= 6 and b["prompt_tokens"] > 1 for b in batches)
    assert not (tmp_path / "metrics.jsonl").exists()
    # a rerun after a write cut off mid-line: the half line goes, every later line is whole JSON
    log = tmp_path / "sample" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "time_st')
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS + [{"prompt": "One more"}])
    sample_candidates(cfg(tmp_path, metrics=str(log)))
    assert [b["step"] for b in lines(log)] == [1, 2, 1]


def test_rerun_samples_only_the_prompts_missing_from_the_output(tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    sample_candidates(cfg(tmp_path))
    first = lines(tmp_path / "cand.jsonl")
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    assert sample_candidates(cfg(tmp_path)) == 1
    rows = lines(tmp_path / "cand.jsonl")
    assert rows[:2] == first and rows[2]["prompt"] == "The food at this place"
    assert sample_candidates(cfg(tmp_path)) == 0


def test_a_line_cut_off_by_an_interrupted_write_is_sampled_again(tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    sample_candidates(cfg(tmp_path))
    text = (tmp_path / "cand.jsonl").read_text()
    (tmp_path / "cand.jsonl").write_text(text[: text.rindex("{") + 20])  # last record half written
    assert sample_candidates(cfg(tmp_path)) == 1
    assert len(lines(tmp_path / "cand.jsonl")) == 3


def test_a_time_budget_stops_after_the_batch_that_leaves_no_room_and_keeps_what_it_wrote(tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    full = tmp_path / "full.jsonl"
    assert sample_candidates(cfg(tmp_path, output=str(full), time_budget_minutes=60.0)) == 3  # room for every batch
    # a budget smaller than one batch: the first batch (2 prompts) always runs, the second would pass the deadline
    assert sample_candidates(cfg(tmp_path, time_budget_minutes=1e-5)) == 2
    cut = lines(tmp_path / "cand.jsonl")
    assert cut == lines(full)[:2]  # the same records as a run without the deadline: batches are seeded by position
    assert sample_candidates(cfg(tmp_path)) == 1  # a rerun without it samples the prompt left out
    assert lines(tmp_path / "cand.jsonl") == lines(full)


def test_cli_sample_on_the_tiny_model(tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:2])
    out = tmp_path / "c.jsonl"
    cli("sample", "--model", "tiny", "--prompts", str(tmp_path / "prompts.jsonl"), "--k", "2", "--output", str(out),
         "--max-new-tokens", "4", "--seed", "1")
    rows = lines(out)
    assert len(rows) == 2 and all(len(r["responses"]) == 2 for r in rows) and rows[0]["sampling"]["seed"] == 1


def test_bf16_sampling_writes_the_same_records_from_bf16_weights(tmp_path, monkeypatch):
    import rlhfkit.models.generation as generation
    import rlhfkit.stages.sample as sample

    dtypes = []
    real = generation.generate_ids

    def spy(model, *a, **k):
        dtypes.append(next(model.parameters()).dtype)
        return real(model, *a, **k)

    monkeypatch.setattr(sample, "generate_ids", spy)
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    assert sample_candidates(cfg(tmp_path, precision="bf16")) == 3
    assert dtypes and set(dtypes) == {__import__("torch").bfloat16}
    rows = lines(tmp_path / "cand.jsonl")
    assert len(rows) == 3 and all(len(r["responses"]) == 3 for r in rows)


def test_each_distinct_answer_is_kept_once_and_a_prompt_whose_answers_are_all_one_text_is_left_out(tmp_path, monkeypatch,
                                                                                                     capsys):
    """A confident model on a short answer samples the same text twice or K times: a candidates record holds
    each text once (a preference needs two different texts), and a prompt with one text has nothing to compare."""
    import rlhfkit.stages.sample as sample

    answers = iter(["a", "a", "b", "c", "c", "c", "d", "e", "d"])  # K = 3 answers to each of the three prompts
    monkeypatch.setattr(sample, "decode_response", lambda tok, ids: next(answers))
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    assert sample_candidates(cfg(tmp_path)) == 2
    assert [r["responses"] for r in lines(tmp_path / "cand.jsonl")] == [["a", "b"], ["d", "e"]]
    assert "1 left out, their 3 answers all one text" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
    read_records(tmp_path / "cand.jsonl", "candidates")
