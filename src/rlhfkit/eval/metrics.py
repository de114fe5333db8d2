"""Evaluation metrics as pure functions on plain lists (no models): easy to test on hand-made inputs.

Conventions: scores and lengths are lists of floats, one per prompt; texts are lists of strings.
Win rates count a tie as half a win, so two identical policies score exactly 0.5.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import numpy as np

_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits and inner apostrophes)."""
    return _WORD.findall(text.lower())


def mean(xs: Sequence[float]) -> float | None:
    """Arithmetic mean, or None for an empty list (so a missing metric is visible, not 0)."""
    return float(np.mean(xs)) if len(xs) else None


def win_outcomes(a: Sequence[float], b: Sequence[float], tie_tol: float = 0.0) -> np.ndarray:
    """Per prompt: 1 when a beats b, 0.5 on a tie (|a − b| ≤ tie_tol), 0 when b wins."""
    if len(a) != len(b):
        raise ValueError(f"win rate: {len(a)} scores against {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return np.where(np.abs(d) <= tie_tol, 0.5, (d > 0).astype(float))


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over ``values`` (resampling prompts with replacement)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    stats = np.array([stat(x[i]) for i in idx])
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def win_rate(a: Sequence[float], b: Sequence[float], tie_tol: float = 0.0, n_boot: int = 1000,
             confidence: float = 0.95, seed: int = 0, per_prompt: int = 1) -> dict:
    """Win rate of a over b (ties count ½) with its bootstrap interval and the win/tie/loss counts.

    ``per_prompt``: consecutive pairs that share a prompt (several answers per prompt). Each prompt's
    outcome is the share of its pairs won, and the interval resamples prompts, not answers, since a
    prompt's answers are not independent of each other.
    """
    out = win_outcomes(a, b, tie_tol)
    if per_prompt < 1 or len(out) % per_prompt:
        raise ValueError(f"win rate: {len(out)} pairs do not split into groups of {per_prompt} per prompt")
    prompts = out.reshape(-1, per_prompt).mean(axis=1)
    lo, hi = bootstrap_ci(prompts, np.mean, n_boot, confidence, seed)
    return {"win_rate": mean(out), "ci": [lo, hi], "wins": int((out == 1).sum()), "ties": int((out == 0.5).sum()),
            "losses": int((out == 0).sum()), "n": len(out), "n_prompts": len(prompts)}


def grouped_rate(groups: Sequence[Sequence[float]], n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of per-pair outcomes (1 a win, ½ a tie, 0 a loss, or a share of several judges) grouped by prompt: each
    prompt counts the mean of its pairs, and the bootstrap interval resamples prompts. Empty groups are left out."""
    groups = [list(g) for g in groups if len(g)]
    flat = np.array([x for g in groups for x in g], dtype=float)
    per_prompt = [float(np.mean(g)) for g in groups]
    lo, hi = bootstrap_ci(per_prompt, np.mean, n_boot, confidence, seed)
    return {"win_rate": mean(per_prompt), "ci": [lo, hi], "wins": int((flat > 0.5).sum()), "ties": int((flat == 0.5).sum()),
            "losses": int((flat < 0.5).sum()), "n": len(flat), "n_prompts": len(groups)}


def macro_f1(predicted: Sequence[str | None], gold: Sequence[str], labels: Sequence[str]) -> float | None:
    """Mean over ``labels`` of each label's F1, 2·TP / (2·TP + FP + FN); labels neither side uses are left out.

    A prediction outside ``labels`` (None: the answer gave no label) is a miss for its gold label.
    """
    pairs = list(zip(predicted, gold, strict=True))
    f1 = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in pairs)
        fp = sum(p == label and g != label for p, g in pairs)
        fn = sum(p != label and g == label for p, g in pairs)
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return mean(f1)


def grading_accuracy(predicted: Sequence[str | None], gold: Sequence[str], labels: Sequence[str], n_boot: int = 1000,
                     confidence: float = 0.95, seed: int = 0, per_prompt: int = 1) -> dict:
    """Share of answers whose label (a grader's verdict) equals the gold one, with its bootstrap interval and macro-F1.

    An answer without a label counts as wrong (``no_label`` says how many). ``per_prompt``: consecutive
    answers that share a prompt; the interval resamples prompts, as :func:`win_rate` does.
    """
    hits = np.array([p == g for p, g in zip(predicted, gold, strict=True)], dtype=float)
    if per_prompt < 1 or len(hits) % per_prompt:
        raise ValueError(f"grading accuracy: {len(hits)} answers do not split into groups of {per_prompt} per prompt")
    prompts = hits.reshape(-1, per_prompt).mean(axis=1)
    lo, hi = bootstrap_ci(prompts, np.mean, n_boot, confidence, seed)
    return {"accuracy": mean(hits), "ci": [lo, hi], "macro_f1": macro_f1(predicted, gold, labels),
            "no_label": sum(p not in labels for p in predicted), "n": len(hits), "n_prompts": len(prompts)}


def grading(texts: Sequence[str], records: Sequence[dict], n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
            per_prompt: int = 1) -> dict | None:
    """:func:`grading_accuracy` of the replies to grading prompts (records with a gold ``verdict``), each reply's
    verdict read from its opening; None when no record is a grading prompt."""
    from rlhfkit.judges.recipes import VERDICTS, verdict_of

    graded = [i for i, r in enumerate(records) if r.get("verdict") in VERDICTS]
    if not graded:
        return None
    return grading_accuracy([verdict_of(texts[i]) for i in graded], [records[i]["verdict"] for i in graded], VERDICTS,
                            n_boot, confidence, seed, per_prompt)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int, int, int]:
    """(word edits, reference words, character edits, reference characters) between two transcripts, both
    normalised first (lower case, words only: :func:`rlhfkit.data.speech.normalise`); jiwer counts the edits."""
    import jiwer

    from rlhfkit.data.speech import normalise

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        raise ValueError("word error rate: the reference transcript is empty")
    w = jiwer.process_words(ref, hyp) if hyp else None
    c = jiwer.process_characters(ref, hyp) if hyp else None
    word_edits = w.substitutions + w.deletions + w.insertions if w else len(ref.split())
    char_edits = c.substitutions + c.deletions + c.insertions if c else len(ref)
    return word_edits, len(ref.split()), char_edits, len(ref)


def error_rate(counts: Sequence[tuple[int, int, int, int]], per_prompt: int = 1, n_boot: int = 1000,
               confidence: float = 0.95, seed: int = 0) -> dict:
    """Corpus WER and CER (all edits over all reference words / characters) with bootstrap intervals that
    resample prompts (``per_prompt`` consecutive answers share one)."""
    a = np.array(counts, dtype=float).reshape(-1, per_prompt, 4).sum(axis=1)  # a row per prompt
    rng = np.random.default_rng(seed)
    draws = a[rng.integers(0, len(a), size=(n_boot, len(a)))].sum(axis=1)  # (n_boot, 4)
    alpha = (1 - confidence) / 2
    total = a.sum(axis=0)

    def ci(edits: int, ref: int) -> list[float]:
        rates = draws[:, edits] / np.maximum(draws[:, ref], 1)
        return [float(np.quantile(rates, alpha)), float(np.quantile(rates, 1 - alpha))]

    return {"wer": float(total[0] / total[1]), "wer_ci": ci(0, 1), "cer": float(total[2] / total[3]), "cer_ci": ci(2, 3),
            "n": len(counts), "n_prompts": len(a)}


def transcription(texts: Sequence[str], records: Sequence[dict], n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0, per_prompt: int = 1) -> dict | None:
    """:func:`error_rate` of the answers to transcription prompts (records with a recogniser's ``nbest`` and the
    ``reference`` said); None when no record is one."""
    spoken = [i for i, r in enumerate(records) if r.get("nbest") and r.get("reference")]
    if not spoken:
        return None
    if len(spoken) != len(records):
        raise ValueError(f"transcription: {len(records) - len(spoken)} of {len(records)} prompt records have no "
                         f"recogniser \"nbest\" or \"reference\"; a transcription prompt set needs both on every record")
    return error_rate([word_errors(records[i]["reference"], texts[i]) for i in spoken], per_prompt, n_boot, confidence, seed)


def oracle_hypothesis(record: dict) -> str:
    """The N-best list's hypothesis closest to the reference (fewest word edits): the best a picker could do."""
    return min((h["text"] for h in record["nbest"]), key=lambda t: word_errors(record["reference"], t)[0])


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's ρ: the Pearson correlation of the two lists' ranks (tied values share their mean rank);
    None when fewer than two values or one list is constant (no order to compare)."""
    if len(a) != len(b):
        raise ValueError(f"rank correlation: {len(a)} values against {len(b)}")

    def ranks(x: Sequence[float]) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        r = np.empty(len(x))
        r[x.argsort(kind="stable")] = np.arange(len(x), dtype=float)
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def sequence_kl(logp: Sequence[Sequence[float]], ref_logp: Sequence[Sequence[float]]) -> list[float]:
    """Per answer: Σ over its tokens of log π − log π_ref (the k1 estimate of KL for a sampled answer)."""
    out = []
    for i, (lp, rp) in enumerate(zip(logp, ref_logp, strict=True)):
        if len(lp) != len(rp):
            raise ValueError(f"answer {i}: {len(lp)} policy log-probs but {len(rp)} reference log-probs")
        out.append(float(np.sum(np.asarray(lp, dtype=float) - np.asarray(rp, dtype=float))))
    return out


def sampled_kl(logp: Sequence[Sequence[float]], ref_logp: Sequence[Sequence[float]]) -> float | None:
    """KL(π‖π_ref) per answer, estimated on answers sampled from π: mean over answers of the summed k1."""
    return mean(sequence_kl(logp, ref_logp))


def best_of_n_kl(n: int) -> float:
    """KL of best-of-n sampling to its base policy: log n − (n − 1)/n (Stiennon et al. 2020, App. G)."""
    return math.log(n) - (n - 1) / n


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0–100) of hypotheses against one reference each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (rouge-score, 0–1, with stemming) against one reference each."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per = [scorer.score(ref, hyp) for hyp, ref in zip(hyps, refs, strict=True)]
    return {k: float(np.mean([p[k].fmeasure for p in per])) if per else math.nan for k in ("rouge1", "rouge2", "rougeL")}


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams over every text (0 when there are none)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def no_eos_fraction(ended: Sequence[bool]) -> float:
    """Share of answers that hit the length limit without an end-of-sequence token."""
    return float(np.mean([not e for e in ended])) if len(ended) else 0.0


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean per-token negative log-likelihood); capped at exp(50) so a bad model stays finite."""
    return math.exp(min(total_nll / max(n_tokens, 1), 50.0))
