"""``rlhf eval``: checkpoints against a reference policy on one prompt set → eval.json + samples.jsonl.

For each model: sample one answer per prompt (same seed for every model, so identical models give
identical answers), then measure
- reward-model score and gold-judge score (when ``reward`` / ``judge`` are given);
- KL to the reference, estimated on the model's own sampled answers: Σ over answer tokens of
  log π − log π_ref (temperature-scaled logits, as in PPO), averaged over prompts;
- win rate against the reference's answers, by reward model and by gold judge, ties counted as ½,
  with a bootstrap interval and the mean length of both sides beside it (a win bought by length shows);
- BLEU and ROUGE against the prompt records' "reference" answers, perplexity on held-out SFT data,
  mean length, distinct-1/2 and the share of answers without EOS;
- on grading prompts (records with a gold ``verdict``): grading accuracy, the share of answers whose opening
  verdict is the gold one, with a bootstrap interval over prompts, and macro-F1 over the verdicts;
- on transcription prompts (records with a speech recogniser's ``nbest`` and the ``reference`` said): word and
  character error rates (jiwer's edit counts over the whole set) with bootstrap intervals over prompts, and the
  same for the recogniser's own 1-best and the oracle N-best (its hypothesis nearest the reference) as
  ``recogniser`` baselines.
``best_of=N`` adds a baseline: the reference's best of N samples by reward-model score (rejection
sampling; at temperature 1 when eval itself is greedy), whose KL is the analytic log N − (N − 1)/N.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console

from rlhfkit.accel import speed_up
from rlhfkit.accel.precision import sampling_copy
from rlhfkit.config import ConfigError, EvalConfig, save_config
from rlhfkit.data.formats import prompt_messages, prompt_text, read_records, sft_pair, write_records
from rlhfkit.data.tokenize import encode_prompt, encode_sft
from rlhfkit.eval import metrics as M
from rlhfkit.models.generation import decode_response, generate_ids
from rlhfkit.models.lm_loss import heldout_loss, logits_between
from rlhfkit.rl.losses import logprobs_from_logits

console = Console(stderr=True)


@dataclass
class Answers:
    """One answer per prompt: token ids (EOS kept when produced), decoded text, and whether it ended."""

    ids: list[list[int]]
    texts: list[str]
    ended: list[bool]
    rm: list[float] | None = None
    gold: list[float] | None = None


def parse_model_arg(arg: str) -> tuple[str, str]:
    """``"label=spec"`` → (label, spec); a bare spec is its own label."""
    label, sep, spec = arg.partition("=")
    if sep and label and "/" not in label:
        return label, spec
    return arg, arg


def unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def model_list(models: list[str], reference: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(reference spec, [(label, spec)]): the reference defaults to the first model and is listed first when
    not among the models, since its row is the "before" every other row is compared with."""
    named = [parse_model_arg(m) for m in models]
    ref_spec = reference or named[0][1]
    if ref_spec not in [spec for _, spec in named]:
        named.insert(0, ("reference", ref_spec))
    return ref_spec, list(zip(unique_labels([label for label, _ in named]), [spec for _, spec in named]))


def sample_answers(model, tok, prompt_ids: list[list[int]], cfg: EvalConfig, seed: int) -> Answers:
    """Answers sampled from ``model`` — the weights to decode with (:func:`~rlhfkit.accel.precision.sampling_copy`)."""
    torch.manual_seed(seed)
    ids = generate_ids(model, tok, prompt_ids, cfg.max_new_tokens, cfg.temperature, batch_size=cfg.batch_size, progress=True)
    return Answers(ids, [decode_response(tok, x) for x in ids], [bool(x) and x[-1] == tok.eos_token_id for x in ids])


@torch.inference_mode()
def response_logprobs(model, prompts: list[list[int]], responses: list[list[int]], temperature: float,
                      batch_size: int, pad_id: int) -> list[list[float]]:
    """log π(token) of each response token given its prompt (right-padded batches; logits / temperature).

    Logits are made only for a batch's columns from its first response token to its last (``logits_to_keep``),
    as SFT's loss makes them: a prompt's columns are most of each row and need none.
    """
    out: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts, batch_responses = prompts[start:start + batch_size], responses[start:start + batch_size]
        seqs = [p + r for p, r in zip(batch_prompts, batch_responses)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
        first, end = min(len(p) for p in batch_prompts) - 1, width - 1  # position t predicts token t+1
        if first >= end:  # no response tokens in this batch
            out.extend([] for _ in seqs)
            continue
        logits = logits_between(model, ids, attn, first, end)
        lp = logprobs_from_logits(logits, ids[:, first + 1:end + 1], temperature)  # (batch, end - first)
        for i, (p, r) in enumerate(zip(batch_prompts, batch_responses)):
            out.append(lp[i, len(p) - 1 - first:len(p) - 1 - first + len(r)].tolist())
    return out


def best_of_indices(scores: list[float], n: int) -> list[int]:
    """Index of the best of each consecutive group of ``n`` scores (the first one on a tie)."""
    return [i + max(range(n), key=lambda j: scores[i + j]) for i in range(0, len(scores), n)]


def perplexity_on(model, tok, records: list[dict], cfg: EvalConfig) -> dict:
    """Per-token loss and perplexity of the SFT answers (the same measure SFT logs as eval_loss/eval_ppl)."""
    examples = [encode_sft(tok, *sft_pair(r), cfg.max_len, cfg.max_prompt_len, cfg.chat) for r in records]
    res = heldout_loss(model, examples, tok.pad_token_id, cfg.batch_size)
    return {"ppl": res["eval_ppl"], "eval_loss": res["eval_loss"]}


def same_tokenizer(a, b) -> bool:
    return len(a) == len(b) and a.eos_token_id == b.eos_token_id and a("rlhfkit checks the vocabulary")["input_ids"] == b("rlhfkit checks the vocabulary")["input_ids"]


def side_by_side(model_scores: list[float], ref_scores: list[float], model: Answers, ref: Answers, cfg: EvalConfig) -> dict:
    """Win rate against the reference with its interval and both sides' mean length (tokens)."""
    out = M.win_rate(model_scores, ref_scores, cfg.tie_tol, cfg.bootstrap, cfg.confidence, cfg.seed, cfg.samples_per_prompt)
    out["len_model"] = M.mean([len(x) for x in model.ids])
    out["len_reference"] = M.mean([len(x) for x in ref.ids])
    return out


def summarise(name: str, spec: str, ans: Answers, ref: Answers, records: list[dict], cfg: EvalConfig,
              kl: float | None, kl_method: str | None, extra: dict | None = None) -> dict:
    """One model's row of eval.json; a metric that was not measured is None."""
    refs = [r.get("reference") for r in records]
    have_refs = [i for i, r in enumerate(refs) if isinstance(r, str) and r.strip()]
    row: dict = {
        "name": name, "spec": spec, "is_reference": ans is ref, "n": len(ans.texts),
        "rm_score": M.mean(ans.rm) if ans.rm is not None else None,
        "gold_score": M.mean(ans.gold) if ans.gold is not None else None,
        "grading": M.grading(ans.texts, records, cfg.bootstrap, cfg.confidence, cfg.seed, cfg.samples_per_prompt),
        "transcription": M.transcription(ans.texts, records, cfg.bootstrap, cfg.confidence, cfg.seed, cfg.samples_per_prompt),
        "kl": kl, "kl_method": kl_method,
        "win_rate_rm": side_by_side(ans.rm, ref.rm, ans, ref, cfg) if ans.rm is not None else None,
        "win_rate_gold": side_by_side(ans.gold, ref.gold, ans, ref, cfg) if ans.gold is not None else None,
        "bleu": None, "rouge1": None, "rouge2": None, "rougeL": None, "ppl": None, "eval_loss": None,
        "response_len": M.mean([len(x) for x in ans.ids]),
        "response_words": M.mean([len(M.words(t)) for t in ans.texts]),
        "distinct_1": M.distinct_n(ans.texts, 1), "distinct_2": M.distinct_n(ans.texts, 2),
        "no_eos_frac": M.no_eos_fraction(ans.ended),
    }
    if have_refs:
        hyps, gold_refs = [ans.texts[i] for i in have_refs], [refs[i] for i in have_refs]
        row["bleu"] = M.bleu(hyps, gold_refs)
        row.update(M.rouge(hyps, gold_refs))
    row.update(extra or {})
    return row


def evaluate_models(cfg: EvalConfig) -> dict:
    """Evaluate ``cfg.models`` against ``cfg.reference``; writes eval.json and samples.jsonl; returns eval.json's dict."""
    from rlhfkit.accel.runtime import set_threads
    from rlhfkit.judges import get_judge
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    if not cfg.models:
        raise ConfigError("config: models: give at least one model (--model SPEC)")
    if not cfg.prompts:
        raise ConfigError("config: prompts: a prompt JSONL file is required (--prompts FILE)")
    if cfg.best_of and not cfg.reward:
        raise ConfigError("config: best_of: the best-of-N baseline ranks samples by a reward model; give --reward DIR")
    set_threads(cfg.threads)
    out = Path(cfg.output)
    records = read_records(cfg.prompts, "prompt")
    if cfg.max_prompts:
        records = records[:cfg.max_prompts]
    if cfg.samples_per_prompt < 1:
        raise ConfigError(f"config: samples_per_prompt: expected at least 1, got {cfg.samples_per_prompt}")
    per = cfg.samples_per_prompt
    prompt_records = records
    records = [r for r in prompt_records for _ in range(per)]  # one row per answer, a prompt's answers side by side
    sft_records = read_records(cfg.sft_data, "sft") if cfg.sft_data else None
    judge = get_judge(cfg.judge) if cfg.judge else None
    scorer = None
    if cfg.reward:
        from rlhfkit.models.reward import RewardScorer

        scorer = RewardScorer.load(cfg.reward)
    skipped = {}
    if scorer is None:
        skipped["rm_score"] = "no reward model given (--reward DIR)"
    if judge is None:
        skipped["gold_score"] = "no gold judge given (--judge NAME)"
    if not any(isinstance(r.get("reference"), str) and r["reference"].strip() for r in records):
        skipped["bleu_rouge"] = f"{cfg.prompts} has no \"reference\" answers"
    if sft_records is None:
        skipped["ppl"] = "no held-out SFT data given (--sft-data FILE)"

    def score(ans: Answers) -> Answers:
        if scorer is not None:
            ans.rm = [float(x) for x in scorer.score(records, ans.texts)]
        if judge is not None:
            ans.gold = [float(x) for x in judge(records, ans.texts)]
        return ans

    ref_spec, named = model_list(cfg.models, cfg.reference)
    labels, specs = [label for label, _ in named], [spec for _, spec in named]
    console.print(f"eval: {len(prompt_records)} prompts × {per} answer(s), {len(specs)} model(s), reference {ref_spec}")
    ref_tok = load_tokenizer(ref_spec)
    ref_model = load_causal_lm(ref_spec)
    speed_up(ref_model, device=torch.device("cpu"), head_apart=True)  # fp32 products: the measured route (accel/)
    ref_prompts = [encode_prompt(ref_tok, prompt_messages(r), cfg.chat) for r in records]
    console.print(f"eval: sampling the reference {ref_spec}")
    ref_sampler = sampling_copy(ref_model, cfg.precision)  # one bf16 copy serves the reference and best-of-N
    ref = score(sample_answers(ref_sampler, ref_tok, ref_prompts, cfg, cfg.seed))
    kl_temperature = cfg.temperature if cfg.temperature > 0 else 1.0
    kl_method = "sampled" if cfg.temperature > 0 else "greedy answers (biased)"

    rows, answers = [], {}
    for label, spec in zip(labels, specs):
        if spec == ref_spec:
            ans, kl, method, model, tok = ref, 0.0, kl_method, ref_model, ref_tok
        else:
            console.print(f"eval: sampling {label}")
            # an adapter stays apart from its base: merged into the bf16 sampling copy, updates below half a bf16
            # step of a weight would round away
            tok, model = load_tokenizer(spec), load_causal_lm(spec)
            speed_up(model, device=torch.device("cpu"), head_apart=True)
            prompts = [encode_prompt(tok, prompt_messages(r), cfg.chat) for r in records]
            ans = score(sample_answers(sampling_copy(model, cfg.precision), tok, prompts, cfg, cfg.seed))
            kl, method = None, None
            if same_tokenizer(tok, ref_tok):
                lp = response_logprobs(model, prompts, ans.ids, kl_temperature, cfg.batch_size, tok.pad_token_id)
                ref_lp = response_logprobs(ref_model, prompts, ans.ids, kl_temperature, cfg.batch_size, tok.pad_token_id)
                kl, method = M.sampled_kl(lp, ref_lp), kl_method
            else:
                skipped[f"kl:{label}"] = "its tokenizer differs from the reference's"
        extra = perplexity_on(model, tok, sft_records, cfg) if sft_records else None
        rows.append(summarise(label, spec, ans, ref, records, cfg, kl, method, extra))
        answers[label] = ans

    if cfg.best_of:
        n = cfg.best_of
        console.print(f"eval: best-of-{n} baseline from the reference")
        # N greedy answers would be one answer: under a greedy eval the N are sampled at temperature 1
        drawn = cfg if cfg.temperature > 0 else replace(cfg, temperature=1.0)
        many = sample_answers(ref_sampler, ref_tok, [p for p in ref_prompts for _ in range(n)], drawn, cfg.seed + 1)
        rm = [float(x) for x in scorer.score([r for r in records for _ in range(n)], many.texts)]
        pick = best_of_indices(rm, n)
        best = score(Answers([many.ids[k] for k in pick], [many.texts[k] for k in pick], [many.ended[k] for k in pick]))
        label = f"best-of-{n}"
        rows.append(summarise(label, ref_spec, best, ref, records, cfg, M.best_of_n_kl(n), "analytic log N − (N−1)/N",
                              {"best_of": n}))
        answers[label] = best

    result = {
        "prompts": str(cfg.prompts), "n_prompts": len(prompt_records), "samples_per_prompt": per, "reference": ref_spec, "judge": cfg.judge,
        "reward": cfg.reward, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
        "skipped": skipped, "models": rows,
    }
    if any(row["transcription"] for row in rows):  # what the recogniser gave the models to start from
        args = (cfg.bootstrap, cfg.confidence, cfg.seed)
        result["recogniser"] = {"one_best": M.transcription([r["one_best"] for r in prompt_records], prompt_records, *args),
                                "oracle_nbest": M.transcription([M.oracle_hypothesis(r) for r in prompt_records],
                                                                prompt_records, *args)}
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    (out / "eval.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_records(out / "samples.jsonl", (
        {"index": i // per, "sample": i % per, "prompt": prompt_text(rec), "model": label, "response": ans.texts[i], "tokens": len(ans.ids[i]),
         "ended": ans.ended[i], "rm_score": ans.rm[i] if ans.rm is not None else None,
         "gold_score": ans.gold[i] if ans.gold is not None else None,
         **({"reference": rec["reference"], "one_best": rec.get("one_best", "")} if rec.get("nbest") else {})}
        for label, ans in answers.items() for i, rec in enumerate(records)))
    console.print(f"eval: wrote {out / 'eval.json'} and {out / 'samples.jsonl'}")
    return result
