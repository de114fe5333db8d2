"""The peer side of bench/ppo_vs_trl.py: TRL 1.12.0's PPOTrainer for a few updates, run in the peer venv.

Run by the harness, not by hand:
  bench/out/trl-venv/bin/python bench/trl_ppo_worker.py --job JOB.json --result RESULT.json
JOB.json names the policy folder, the reward-model folder (also the value model's start), the prompt ids
and the settings; RESULT.json gets the seconds of each update and the generated tokens of each update.
Nothing of TRL is changed: a callback stamps the end of each update, and a wrapper around TRL's
``batch_generation`` counts the response tokens (up to and including the first EOS, as ours does).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    job = json.loads(open(args.job).read())

    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(job["policy"])
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.float32
    policy = AutoModelForCausalLM.from_pretrained(job["policy"], dtype=dtype)
    ref = AutoModelForCausalLM.from_pretrained(job["policy"], dtype=dtype)
    reward = AutoModelForSequenceClassification.from_pretrained(job["reward"], num_labels=1, dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(job["reward"], num_labels=1, dtype=dtype)
    train = Dataset.from_dict({"input_ids": job["prompt_ids"]})

    updates, batch = job["updates"], job["batch_size"]
    cfg = PPOConfig(
        output_dir=job["output"], per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_ppo_epochs=job["ppo_epochs"], num_mini_batches=job["num_minibatches"],
        response_length=job["max_new_tokens"], local_rollout_forward_batch_size=batch,
        total_episodes=batch * updates, learning_rate=3e-6, temperature=job["temperature"], kl_coef=0.05,
        stop_token="eos", missing_eos_penalty=1.0, num_sample_generations=0, report_to="none",
        save_strategy="no", logging_steps=1, use_cpu=True, seed=job["seed"], bf16=False, fp16=False,
        disable_tqdm=True, dataloader_num_workers=0,
    )

    tokens: list[int] = []
    original = ppo_module.batch_generation
    eos = tok.eos_token_id

    def counting_generation(model, queries, *a, **kw):
        query_responses, logits = original(model, queries, *a, **kw)
        resp = query_responses[:, queries.shape[1]:]
        is_eos = (resp == eos).long()
        tokens.append(int(((is_eos.cumsum(1) - is_eos) == 0).sum()))
        return query_responses, logits

    ppo_module.batch_generation = counting_generation

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=train, value_model=value, eval_dataset=train.select(range(batch)),
                         callbacks=[Stamp()])
    trainer.train()
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    with open(args.result, "w") as f:
        json.dump({"seconds": seconds, "tokens": tokens[: len(seconds)], "batch_size": batch}, f)


if __name__ == "__main__":
    main()
