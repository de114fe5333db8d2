"""The shipped recipe datasets are valid, big enough, and keep their splits apart."""

from pathlib import Path

import pytest

from rlhfkit.data.formats import read_records

RECIPES = Path(__file__).resolve().parents[2] / "src" / "rlhfkit" / "recipes"

# recipe -> minimum record counts per file
MINIMUMS = {
    "tutor": {"sft": 140, "prompts": 320, "eval": 48},
    "sentiment": {"sft": 80, "prompts": 240, "eval": 40},
    "writer": {"sft": 90, "prompts": 200, "eval": 40},
    "support": {"sft": 90, "prompts": 200, "eval": 40},
}
KINDS = {"sft": "sft", "prompts": "prompt", "eval": "prompt"}
WITH_KEYWORDS = ("tutor", "writer", "support")


def load(recipe: str, split: str) -> list[dict]:
    return read_records(RECIPES / recipe / f"{split}.jsonl", KINDS[split])


@pytest.mark.parametrize("recipe", sorted(MINIMUMS))
def test_each_file_validates_and_meets_its_minimum_size(recipe):
    for split, minimum in MINIMUMS[recipe].items():
        records = load(recipe, split)
        assert len(records) >= minimum, f"{recipe}/{split}.jsonl has {len(records)} records, need {minimum}"


@pytest.mark.parametrize("recipe", sorted(MINIMUMS))
def test_no_prompt_is_repeated_within_a_file(recipe):
    for split in KINDS:
        prompts = [r["prompt"] for r in load(recipe, split)]
        dupes = {p for p in prompts if prompts.count(p) > 1}
        assert not dupes, f"{recipe}/{split}.jsonl repeats: {sorted(dupes)[:3]}"


@pytest.mark.parametrize("recipe", sorted(MINIMUMS))
def test_no_prompt_leaks_between_sft_prompts_and_eval(recipe):
    splits = {split: {r["prompt"].strip().lower() for r in load(recipe, split)} for split in KINDS}
    for a, b in [("sft", "prompts"), ("sft", "eval"), ("prompts", "eval")]:
        shared = splits[a] & splits[b]
        assert not shared, f"{recipe}: {a} and {b} share {sorted(shared)[:3]}"


@pytest.mark.parametrize("recipe", WITH_KEYWORDS)
def test_prompt_and_eval_records_carry_keywords(recipe):
    for split in ("prompts", "eval"):
        for i, rec in enumerate(load(recipe, split), 1):
            kw = rec.get("keywords")
            assert isinstance(kw, list) and kw, f"{recipe}/{split}.jsonl:{i}: keywords: expected a non-empty list"
            assert all(isinstance(k, str) and k.strip() for k in kw), f"{recipe}/{split}.jsonl:{i}: keywords: non-string"


@pytest.mark.parametrize("recipe", sorted(MINIMUMS))
def test_eval_records_carry_a_reference_answer(recipe):
    for i, rec in enumerate(load(recipe, "eval"), 1):
        ref = rec.get("reference")
        assert isinstance(ref, str) and ref.strip(), f"{recipe}/eval.jsonl:{i}: reference: expected a non-empty string"


def test_sentiment_openings_are_short_fragments():
    for split in KINDS:
        for rec in load("sentiment", split):
            assert 3 <= len(rec["prompt"].split()) <= 10, rec["prompt"]


def test_writer_rewrites_are_shorter_and_keep_the_facts():
    for rec in load("writer", "eval"):
        draft = rec["prompt"].split("\n\n", 1)[1]
        assert len(rec["reference"].split()) < len(draft.split())
        assert all(k in rec["reference"].lower() for k in rec["keywords"]), rec["prompt"][:80]
