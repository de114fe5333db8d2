"""Every TRL dataset shape, built with ``datasets``, read as rlhfkit's records from every container, then trained on.

The shapes are TRL's documented ones (standard and conversational; implicit prompts; Anthropic HH strings;
unpaired KTO records); the containers are JSONL, JSON, parquet, CSV, a ``save_to_disk`` folder (and a
DatasetDict's split). No network: every dataset is built in memory.
"""

from __future__ import annotations

import json

import datasets
import pytest

from rlhfkit.config import DPOConfig, PPOConfig, RewardConfig, SFTConfig
from rlhfkit.data.formats import RecordError, read_records
from rlhfkit.data.groups import build_groups
from rlhfkit.data.tokenize import encode_sft
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.tracking import read_metrics


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


SHAPES = {  # name: (TRL rows, the kind a stage reads it as, the rlhfkit record the first row becomes)
    "language modelling": ([{"text": "The sky is blue."}, {"text": "Grass is green."}], "sft", {"text": "The sky is blue."}),
    "conversational language modelling": (
        [{"messages": user("What colour is the sky?") + assistant("It is blue.")}], "sft",
        {"messages": user("What colour is the sky?") + assistant("It is blue.")}),
    "prompt-only": ([{"prompt": "The sky is"}], "prompt", {"prompt": "The sky is"}),
    "conversational prompt-only": ([{"prompt": user("What colour is the sky?")}], "prompt",
                                   {"messages": user("What colour is the sky?")}),
    "prompt-completion": ([{"prompt": "The sky is", "completion": " blue."}], "sft",
                          {"prompt": "The sky is", "completion": " blue."}),
    "conversational prompt-completion": (
        [{"prompt": user("What colour is the sky?"), "completion": assistant("It is blue.")}], "sft",
        {"messages": user("What colour is the sky?") + assistant("It is blue.")}),
    "preference": ([{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}], "preference",
                   {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}),
    "conversational preference": (
        [{"prompt": user("What colour is the sky?"), "chosen": assistant("It is blue."), "rejected": assistant("It is green.")}],
        "preference", {"messages": user("What colour is the sky?"), "chosen": "It is blue.", "rejected": "It is green."}),
    "implicit-prompt preference": ([{"chosen": "The sky is blue.", "rejected": "The sky is green."}], "preference",
                                   {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}),
    "conversational implicit-prompt preference": (
        [{"chosen": user("What colour is the sky?") + assistant("It is blue."),
          "rejected": user("What colour is the sky?") + assistant("It is green.")}], "preference",
        {"messages": user("What colour is the sky?"), "chosen": "It is blue.", "rejected": "It is green."}),
    "Anthropic HH": (
        [{"chosen": "\n\nHuman: What colour is the sky?\n\nAssistant: Blue.\n\nHuman: And grass?\n\nAssistant: Green.",
          "rejected": "\n\nHuman: What colour is the sky?\n\nAssistant: Blue.\n\nHuman: And grass?\n\nAssistant: Purple."}],
        "preference",
        {"messages": user("What colour is the sky?") + assistant("Blue.") + user("And grass?"),
         "chosen": "Green.", "rejected": "Purple."}),
    "unpaired preference": ([{"prompt": "The sky is", "completion": " blue.", "label": True},
                             {"prompt": "The sky is", "completion": " green.", "label": False}], "rating",
                            {"prompt": "The sky is", "response": " blue.", "score": 1.0, "label": True}),
    "conversational unpaired preference": (
        [{"prompt": user("What colour is the sky?"), "completion": assistant("It is blue."), "label": True}], "rating",
        {"messages": user("What colour is the sky?"), "response": "It is blue.", "score": 1.0, "label": True}),
}


def save(rows: list[dict], tmp_path, container: str) -> str:
    """``rows`` written by ``datasets`` in ``container``; returns the spec a stage is given."""
    ds = datasets.Dataset.from_list(rows)
    if container == "jsonl":
        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)
    if container == "json":
        ds.to_json(tmp_path / "data.json")  # JSON lines, as datasets writes it
        return str(tmp_path / "data.json")
    if container == "parquet":
        ds.to_parquet(tmp_path / "data.parquet")
        return str(tmp_path / "data.parquet")
    if container == "disk":
        ds.save_to_disk(tmp_path / "saved")
        return str(tmp_path / "saved")
    if container == "dict":
        datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(tmp_path / "dict")
        return str(tmp_path / "dict") + ":test"
    raise ValueError(container)


@pytest.mark.parametrize("container", ["jsonl", "json", "parquet", "disk", "dict"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_trl_shape_reads_as_rlhfkits_record_from_every_container(shape, container, tmp_path):
    rows, kind, expected = SHAPES[shape]
    records = read_records(save(rows, tmp_path, container), kind)
    assert len(records) == len(rows)
    assert records[0] == expected


def test_a_csv_of_prompt_completion_rows_reads_as_sft_records(tmp_path):
    path = tmp_path / "data.csv"
    datasets.Dataset.from_list([{"prompt": "The sky is", "completion": " blue."}]).to_csv(path)
    assert read_records(path, "sft") == [{"prompt": "The sky is", "completion": " blue."}]


def test_unpaired_records_are_refused_by_sft_by_name_and_become_pairs_for_the_reward_model(tmp_path):
    rows, _, _ = SHAPES["unpaired preference"]
    path = save(rows, tmp_path, "jsonl")
    with pytest.raises(RecordError, match=r"data.jsonl:1: label: an unpaired preference record .* SFT would learn the label-false"):
        read_records(path, "sft")
    groups = build_groups(read_records(path, "auto"))
    assert [(g.responses[c], g.responses[r]) for g in groups for c, r, *_ in g.pairs] == [(" blue.", " green.")]


def test_a_language_modelling_text_trains_on_all_of_its_tokens():
    tok = load_tokenizer("tiny")
    enc = encode_sft(tok, [], "The sky is blue.", max_len=64, max_prompt_len=32)
    text_ids = tok("The sky is blue.", add_special_tokens=False)["input_ids"]
    assert [i for i in enc.labels if i != -100] == text_ids + [tok.eos_token_id]


@pytest.mark.parametrize("bad,field,problem", [
    ({"chosen": "Blue.", "rejected": "Green."}, "chosen", "implicit prompt: the chosen and rejected texts share no start"),
    ({"prompt": user("Hi?"), "chosen": user("Hi?") + assistant("a"), "rejected": assistant("b")}, "chosen",
     "expected one assistant message, got 2 message"),
    ({"chosen": "\n\nAssistant: x\n\nHuman: y", "rejected": "\n\nHuman: y\n\nAssistant: z"}, "chosen",
     "implicit prompt"),
])
def test_a_shape_that_cannot_become_a_record_names_its_line_field_and_why(bad, field, problem, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=f"bad.jsonl:2: {field}: .*{problem}"):
        read_records(path, "preference")


def test_containers_that_are_not_datasets_or_lack_the_split_say_so(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(RecordError, match="is a folder but not a saved dataset"):
        read_records(tmp_path / "folder", "sft")
    ds = datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}])
    datasets.DatasetDict({"dev": ds, "test": ds}).save_to_disk(tmp_path / "dict")
    with pytest.raises(RecordError, match="a DatasetDict with splits dev, test: name one as .*dict:SPLIT"):
        read_records(tmp_path / "dict", "sft")
    with pytest.raises(RecordError, match="no split 'train' \\(splits: dev, test\\)"):
        read_records(f"{tmp_path / 'dict'}:train", "sft")
    with pytest.raises(RecordError, match="hf:nobody/nothing: not a hub dataset in the local cache"):
        read_records("hf:nobody/nothing", "sft")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(RecordError, match="bad.parquet: cannot be read as parquet"):
        read_records(bad, "sft")
    # a parquet row that is a bad record is named by its row
    datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": " "}]).to_parquet(
        tmp_path / "rows.parquet")
    with pytest.raises(RecordError, match="rows.parquet:row 2: completion: expected text, got only whitespace"):
        read_records(tmp_path / "rows.parquet", "sft")


def test_split_as_its_own_flag_picks_a_datasets_folders_split_and_refuses_a_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import rlhfkit.stages.sft
    from rlhfkit.cli import app
    from rlhfkit.data.formats import with_split

    train = datasets.Dataset.from_list([{"prompt": "a", "completion": "train answer"}])
    test = datasets.Dataset.from_list([{"prompt": "a", "completion": "test answer"}] * 2)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dict")
    seen = []
    monkeypatch.setattr(rlhfkit.stages.sft, "train_sft", lambda cfg: seen.append(read_records(cfg.data, "sft")))
    r = CliRunner().invoke(app, ["sft", "--model", "tiny", "--data", str(tmp_path / "dict"), "--split", "test",
                                 "--output", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert [rec["completion"] for rec in seen[0]] == ["test answer", "test answer"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(RecordError, match="p.jsonl: --split test: only a saved dataset folder .* or hf:NAME has splits"):
        with_split(str(tmp_path / "p.jsonl"), "test")
    with pytest.raises(RecordError, match="names its split already"):
        with_split(f"{tmp_path / 'dict'}:train", "test")


def test_the_stages_train_on_trl_shapes_in_datasets_containers(tmp_path):
    from rlhfkit.stages.dpo import train_dpo
    from rlhfkit.stages.ppo import train_ppo
    from rlhfkit.stages.reward_model import train_reward
    from rlhfkit.stages.sft import train_sft

    questions = [f"What is {i} plus {i}?" for i in range(8)]
    for name in ("sft", "pref", "prompts"):
        (tmp_path / name).mkdir()
    sft = save([{"prompt": user(q), "completion": assistant(f"It is {2 * i}.")} for i, q in enumerate(questions)],
               tmp_path / "sft", "parquet")
    train_sft(SFTConfig(model="tiny", data=sft, output=str(tmp_path / "sft-run"), max_steps=2, batch_size=4,
                        eval_fraction=0.0, report_to="none", threads=1))
    assert [r["step"] for r in read_metrics(tmp_path / "sft-run" / "metrics.jsonl")] == [1, 2]

    pref = save([{"chosen": user(q) + assistant(f"It is {2 * i}."), "rejected": user(q) + assistant("No idea.")}
                 for i, q in enumerate(questions)], tmp_path / "pref", "disk")
    train_reward(RewardConfig(model="tiny-minilm", data=pref, output=str(tmp_path / "rm"), max_steps=2, batch_size=4,
                              eval_fraction=0.25, eval_every=0, save_every=0, report_to="none", threads=1))
    assert (tmp_path / "rm" / "reward_stats.json").exists()
    train_dpo(DPOConfig(model="tiny", data=pref, output=str(tmp_path / "dpo"), max_steps=2, batch_size=4, lora=True,
                        eval_fraction=0.25, eval_every=0, save_every=0, report_to="none", threads=1))
    assert [r["step"] for r in read_metrics(tmp_path / "dpo" / "metrics.jsonl")] == [1, 2]

    prompts = save([{"prompt": user(q)} for q in questions], tmp_path / "prompts", "dict")
    train_ppo(PPOConfig(policy="tiny", reward=str(tmp_path / "rm"), prompts=prompts, output=str(tmp_path / "ppo"),
                        max_steps=1, batch_size=4, num_minibatches=1, ppo_epochs=1, max_new_tokens=4, report_to="none",
                        save_every=0, threads=1))
    assert [r["step"] for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl")] == [1]
