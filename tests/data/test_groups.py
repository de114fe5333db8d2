import math

import pytest

from rlhfkit.data.formats import prompt_key
from rlhfkit.data.groups import build_groups
from rlhfkit.data.splits import batch_indices, split_records


def test_a_ranking_of_k_becomes_k_choose_2_pairs_in_one_group_and_ties_give_none():
    (g,) = build_groups([{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1]}])
    assert g.responses == ["c", "a", "d", "b"]
    assert [(g.responses[c], g.responses[r]) for c, r, *_ in g.pairs] == [
        ("c", "a"), ("c", "d"), ("c", "b"), ("a", "d"), ("a", "b"), ("d", "b")]
    (tied,) = build_groups([{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [0, [1, 2], 3]}])
    pairs = {(tied.responses[c], tied.responses[r]) for c, r, *_ in tied.pairs}
    assert len(pairs) == 5 and ("b", "c") not in pairs and ("c", "b") not in pairs


def test_ratings_become_pairs_within_a_prompt_with_ties_dropped_or_regression_targets():
    recs = [{"prompt": "p", "response": "a", "score": 6}, {"prompt": "p", "response": "b", "score": 2},
            {"prompt": "p", "response": "c", "score": 6}, {"prompt": "q", "response": "d", "score": 4}]
    groups = build_groups(recs, "pairs")
    assert len(groups) == 1  # q has one rating: nothing to compare
    (g,) = groups
    assert sorted((g.responses[c], g.responses[r], m) for c, r, m, *_ in g.pairs) == [("a", "b", 4.0), ("c", "b", 4.0)]
    reg = build_groups(recs, "regression")
    assert len(reg) == 2 and all(not bt for g in reg for _, _, _, bt, _ in g.pairs)  # pairs kept for accuracy only
    z = {g.responses[i]: ys[0] for g in reg for i, ys in g.targets.items()}
    assert z["a"] == z["c"] == pytest.approx(1.5 / math.sqrt(2.75)) and z["a"] > z["d"] > z["b"]  # z-scored over the file


def test_edits_make_the_edited_text_win_and_unchanged_edits_are_dropped():
    groups = build_groups([{"prompt": "p", "response": "meh", "edited": "much better"},
                           {"prompt": "q", "response": "fine", "edited": "fine"}])
    assert len(groups) == 1 and groups[0].responses[groups[0].pairs[0][0]] == "much better"


def test_split_is_by_prompt_so_no_prompt_is_on_both_sides():
    recs = []
    for i in range(40):  # several records per prompt: two annotators' rankings and a preference
        for _ in range(2):
            recs.append({"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]})
        recs.append({"messages": [{"role": "user", "content": f"p{i}"}], "chosen": "x", "rejected": "y"})
    groups = build_groups(recs)
    assert len(groups) == 40 and all(len(g.pairs) == 7 for g in groups)  # a plain prompt is the same as its message
    train, held = split_records(groups, 0.25, seed=3)
    assert len(held) == 10 and len(train) == 30
    assert not {prompt_key(g.prompt) for g in train} & {prompt_key(g.prompt) for g in held}


def test_batches_are_a_function_of_seed_and_step_covering_every_example_each_epoch():
    epoch = [i for s in range(4) for i in batch_indices(s, 5, 10, seed=3)]
    assert sorted(epoch[:10]) == list(range(10)) and sorted(epoch[10:]) == list(range(10))
    assert batch_indices(2, 5, 10, seed=3) == batch_indices(2, 5, 10, seed=3)
