"""vLLM as an optional generation backend (docs/design.md §7): fast batched sampling for PPO rollouts and ``rlhf sample``.

vLLM runs its own copy of the policy, so after every PPO update the trainer pushes the policy's current
weights into the engine with ``load_weights``: LoRA adapters are merged into the base weights first (vLLM
sees a plain model), and names are the Hugging Face checkpoint names, which vLLM models' own
``load_weights`` accept (they fuse q/k/v and gate/up themselves). vLLM is not a dependency: asking for this
backend without it installed is one clear error.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rlhfkit.config import ConfigError

MISSING = ("generation: the vllm backend needs vLLM, which is not installed: `pip install vllm` "
           "(or `pip install 'rlhfkit[vllm]'`, on a machine with a CUDA GPU); or use --generation transformers")


def require_vllm():
    """The ``vllm`` module, or the one clear error that says how to get it."""
    try:
        import vllm
    except ImportError:
        raise ConfigError(MISSING) from None
    return vllm


def _lora_deltas(model) -> dict[str, torch.Tensor]:
    """Merged LoRA update (scale · B·A, summed over active adapters) per wrapped module of a PeftModel's base."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
            continue  # already merged into the base weight, or switched off (then the base is the model)
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                d = module.get_delta_weight(adapter)
                deltas[name] = deltas[name] + d if name in deltas else d
    return deltas


def hf_weights(state_dict_or_model: Any) -> dict[str, torch.Tensor]:
    """The weights as a plain transformers checkpoint: ``{hf_name: tensor}``.

    A PeftModel's adapters are merged without touching the training model (its weights and adapters stay as
    they are); peft's names (``base_layer``, ``lora_*``) and a DDP ``module.`` wrapper are removed.
    """
    if isinstance(state_dict_or_model, dict):
        return dict(state_dict_or_model)
    model = getattr(state_dict_or_model, "module", state_dict_or_model)  # DDP keeps the model in .module
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return {k: v.detach() for k, v in model.state_dict().items()}
    deltas = _lora_deltas(model)
    out = {}
    with torch.no_grad():
        for key, value in model.get_base_model().state_dict().items():
            if ".lora_" in key:
                continue
            name = key.replace(".base_layer.", ".")
            module = name.rsplit(".", 1)[0]
            if name.endswith(".weight") and module in deltas:
                value = value + deltas[module].to(value.dtype)
            out[name] = value.detach()
    return out


def engine_model(llm) -> Any:
    """The object whose ``load_weights`` updates the engine: the in-process vLLM model (V0 and V1 layouts).

    Anything that already has ``load_weights`` (a model, or a test's fake engine) is used as it is.
    """
    if hasattr(llm, "load_weights"):
        return llm
    executor = llm.llm_engine.model_executor
    worker = executor.driver_worker
    worker = getattr(worker, "worker", worker)  # V1 wraps the worker once more
    return worker.model_runner.model


class VLLMGenerator:
    """Sample continuations of token-id prompts with a vLLM engine holding (a copy of) the policy."""

    def __init__(self, model: str, *, llm: Any = None, dtype: str = "auto", gpu_memory_utilization: float = 0.4,
                 max_model_len: int | None = None, seed: int = 0, **engine_kwargs: Any):
        """``model``: a folder or hub id vLLM can load (the policy's base); ``llm``: an engine to use instead.

        ``gpu_memory_utilization`` is kept low by default: the policy, reference and value models being
        trained share the GPU with the engine.
        """
        if llm is None:
            # In-process engine (no worker processes), so load_weights reaches the very model that samples.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            vllm = require_vllm()
            llm = vllm.LLM(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                           max_model_len=max_model_len, seed=seed, enable_prefix_caching=False, **engine_kwargs)
        self.llm = llm
        self.asleep = False

    def sample(self, prompt_token_ids: list[list[int]], max_new_tokens: int, temperature: float) -> list[tuple[list[int], list[float]]]:
        """One answer per prompt from softmax(logits / temperature) over the whole vocabulary (no top-k/top-p: the
        distribution the trainer's log-probs describe), with the engine's log-prob of each sampled token."""
        vllm = require_vllm()
        params = vllm.SamplingParams(n=1, max_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=-1, logprobs=0)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_token_ids], params, use_tqdm=False)
        answers = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            answers.append((ids, [c.logprobs[i][t].logprob for i, t in enumerate(ids)] if c.logprobs else [0.0] * len(ids)))
        return answers

    def sleep(self) -> None:
        """Free the GPU for training: vLLM's sleep mode level 1 (weights to CPU memory, KV cache dropped)."""
        self.llm.sleep(level=1)
        self.asleep = True

    def wake_up(self) -> None:
        """Back on the GPU for the next rollout (weights as they were; :meth:`load_weights` then updates them)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompt_token_ids: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, n: int = 1) -> list[list[int]]:
        """``n`` answers per prompt, prompt-major (answers of prompt 0 first); each ends with EOS when one was produced."""
        vllm = require_vllm()
        params = vllm.SamplingParams(n=n, max_tokens=max_new_tokens, temperature=max(temperature, 0.0),
                                     top_p=top_p, top_k=top_k if top_k > 0 else -1)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_token_ids], params, use_tqdm=False)
        return [list(c.token_ids) for o in outs for c in o.outputs]

    def load_weights(self, state_dict_or_model: Any) -> int:
        """Push the policy's current weights into the engine (after each update); returns how many tensors."""
        weights = hf_weights(state_dict_or_model)
        engine_model(self.llm).load_weights(iter(weights.items()))
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()  # cached prompt KV was computed with the old weights
        return len(weights)

