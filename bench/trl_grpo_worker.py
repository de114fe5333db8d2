"""The peer side of bench/grpo_vs_trl.py: TRL's GRPOTrainer or RLOOTrainer for a few updates, run in the peer venv.

Run by the harness, not by hand:
  bench/out/trl-grpo-venv/bin/python bench/trl_grpo_worker.py --job JOB.json --result RESULT.json
JOB.json names the trainer (grpo | rloo), the policy folder, the reward-model folder, the training and held-out
prompts and the settings. RESULT.json gets the seconds of each update (held-out evaluations left out) and, before
training and every ``eval_every`` updates, the policy's answers to the held-out prompts (sampled at the training
temperature from a fixed seed, as rlhfkit's held-out evaluation does); the harness scores them with the gold judge.
At each of those evaluations after the first the LoRA adapters are saved in OUTPUT/snapshots/step-NNNN/, which the
harness's one evaluator then scores as it scores ours.

Nothing of TRL is changed. The reward is a plain function over TRL's (prompts, completions) that scores each pair
with the reward model's folder exactly as rlhfkit's reward model scores it (the code its README.md gives: the
prompt's non-system texts and the answer as a sentence pair, [CLS] or mean pooling as its config says), normalised
by the folder's ``reward_stats.json`` as rlhfkit's PPO normalises it.
"""

from __future__ import annotations

import argparse
import json
import time


def reward_function(folder: str, max_len: int):
    """TRL reward function: (prompts, completions) → normalised reward-model scores, as rlhfkit computes them."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "right"  # [CLS] at position 0 in every row; reward folders saved before the fix say "left"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    stats = json.loads(open(f"{folder}/reward_stats.json").read())
    mean_pooling = getattr(model.config, "rm_pooling", "cls") == "mean"

    def text(value) -> str:  # TRL passes conversational prompts and completions as message lists
        if isinstance(value, str):
            return value
        return "\n".join(m["content"] for m in value if m["role"] != "system")

    @torch.no_grad()
    def rm_score(prompts, completions, **_) -> list[float]:
        enc = tok([text(p) for p in prompts], [text(c) for c in completions], truncation="longest_first",
                  max_length=max_len, padding=True, return_tensors="pt")
        if mean_pooling:
            hidden = model.base_model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            scores = model.classifier((hidden * mask).sum(1) / mask.sum(1))[:, 0]
        else:
            scores = model(**enc).logits[:, 0]
        return ((scores - stats["mean"]) / max(stats["std"], 1e-8)).tolist()

    return rm_score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    job = json.loads(open(args.job).read())

    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    s = job["settings"]
    tok = AutoTokenizer.from_pretrained(job["policy"])
    policy = AutoModelForCausalLM.from_pretrained(job["policy"], dtype=torch.float32)
    train = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in job["prompts"]]})
    common = dict(
        output_dir=job["output"], per_device_train_batch_size=s["batch_size"], gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=s["samples_per_prompt"], max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"], top_p=1.0, top_k=0, learning_rate=s["lr"], lr_scheduler_type="constant",
        warmup_steps=0, beta=s["kl_coef"], epsilon=0.2, num_iterations=1, max_steps=job["updates"],
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        seed=job["seed"], disable_dropout=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    if job["trainer"] == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        cfg, trainer_cls = GRPOConfig(loss_type="dapo", scale_rewards="group", **common), GRPOTrainer
    else:
        from trl import RLOOConfig, RLOOTrainer

        cfg, trainer_cls = RLOOConfig(normalize_advantages=False, **common), RLOOTrainer
    lora = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0, target_modules=s["lora_targets"],
                      task_type="CAUSAL_LM")

    held = [[{"role": "user", "content": p}] for p in job["eval_prompts"]]
    answers: list[dict] = []

    @torch.no_grad()
    def evaluate(model, step: int) -> None:
        """One answer per held-out prompt, sampled from a fixed seed (the RNG of training is left as it was)."""
        model.eval()
        tok.padding_side = "left"
        enc = tok.apply_chat_template(held, add_generation_prompt=True, padding=True, return_tensors="pt",
                                      return_dict=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job["seed"] + 1)
            out = model.generate(**enc, max_new_tokens=s["max_new_tokens"], do_sample=True,
                                 temperature=s["temperature"], top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.append({"step": step, "responses": texts})
        if step > 0:  # the adapters at this step, for the harness's one evaluator (it scores both sides' snapshots alike)
            model.save_pretrained(f"{job['output']}/snapshots/step-{step:04d}")
        model.train()

    seconds: list[float] = []  # per update, from the end of the previous update (or evaluation) to its end
    clock = {"last": 0.0}

    class Stamp(TrainerCallback):
        """Times each update; the held-out evaluations run between updates, off the clock."""

        def on_train_begin(self, args, state, control, model=None, **kw):
            evaluate(model, 0)
            clock["last"] = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            seconds.append(time.perf_counter() - clock["last"])
            if state.global_step % job["eval_every"] == 0 or state.global_step == job["updates"]:
                evaluate(model, state.global_step)
            clock["last"] = time.perf_counter()

    trainer = trainer_cls(model=policy, reward_funcs=reward_function(job["reward"], job["reward_max_len"]), args=cfg,
                          train_dataset=train, processing_class=tok, peft_config=lora, callbacks=[Stamp()])
    trainer.train()
    import trl

    with open(args.result, "w") as f:
        json.dump({"seconds": seconds, "answers": answers, "trl": trl.__version__}, f)


if __name__ == "__main__":
    main()
