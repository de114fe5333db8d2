"""The seeded held-out split, and the note a stage prints when a positive eval_fraction held out nothing."""

from rlhfkit.data.splits import none_held_out, split_records


def test_a_fraction_too_small_for_the_records_is_said_with_the_fraction_that_would_hold_one_out():
    records = list(range(4))
    kept, held = split_records(records, 0.1, seed=0)
    assert (kept, held) == (records, [])
    note = none_held_out(4, 0.1, held, "prompts")
    assert "eval_fraction 0.1 of 4 prompts rounds to none held out" in note and "eval_fraction ≥ 0.12" in note
    kept, held = split_records(records, 0.25, seed=0)
    assert len(held) == 1 and not set(held) & set(kept)
    assert none_held_out(4, 0.25, held, "prompts") == ""
    assert none_held_out(4, 0.0, [], "prompts") == ""  # nothing asked for, nothing to say
    assert "would hold out all 4 prompts" in none_held_out(4, 1.0, split_records(records, 1.0, 0)[1], "prompts")
