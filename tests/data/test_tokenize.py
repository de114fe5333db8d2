import pytest

from rlhfkit.data.tokenize import IGNORE_INDEX, collate_right, encode_prompt, encode_sft, left_pad, position_ids_from_mask
from rlhfkit.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_prompt_tokens_are_masked_and_response_tokens_are_labels(tok):
    msgs = [{"role": "user", "content": "What is two plus two?"}]
    e = encode_sft(tok, msgs, "Four.", max_len=256, max_prompt_len=200)
    n_prompt = len(encode_prompt(tok, msgs))
    assert e.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert e.labels[n_prompt:] == e.input_ids[n_prompt:]
    assert e.input_ids[-1] == tok.eos_token_id
    assert tok.decode(e.input_ids[n_prompt:], skip_special_tokens=True) == "Four."


def test_collate_puts_ignore_index_exactly_on_prompt_and_padding(tok):
    a = encode_sft(tok, [{"role": "user", "content": "Hi"}], "Hello there, friend.", 256, 200)
    b = encode_sft(tok, [{"role": "user", "content": "A much longer question than the first one?"}], "Yes.", 256, 200)
    batch = collate_right([a, b], tok.pad_token_id)
    for row, e in enumerate([a, b]):
        n = len(e.input_ids)
        labels = batch["labels"][row].tolist()
        assert labels[:n] == e.labels
        assert labels[n:] == [IGNORE_INDEX] * (batch["labels"].shape[1] - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["labels"].shape[1] - n)


def test_truncation_keeps_end_of_prompt_and_start_of_response(tok):
    msgs = [{"role": "user", "content": "word " * 300 + "QUESTION"}]
    e = encode_sft(tok, msgs, "answer " * 300, max_len=120, max_prompt_len=80)
    assert e.truncated and len(e.input_ids) == 120
    assert e.labels.count(IGNORE_INDEX) == 80
    full_prompt = encode_prompt(tok, msgs)
    assert e.input_ids[:80] == full_prompt[-80:]
    assert "answer" in tok.decode(e.input_ids[80:83])


def test_left_padding_gives_positions_starting_at_zero_on_each_row():
    ids, attn = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attn.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(attn).tolist() == [[0, 1, 2], [0, 0, 0]]
