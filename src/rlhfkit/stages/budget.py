"""The budget planner: each stage's counts from speeds measured on this machine, so that
``rlhf pipeline --budget-minutes M`` ends near M minutes, quiet machine or busy, fp32 or bf16.

Counts sized on one machine overrun on another (machines differ 3–5×, a busy one more), so the pipeline
measures before it commits and plans again before every stage:

1. Probe (:func:`probe`, once per run folder, before any stage): the run's own starting model and reward
   backbone at the recipe's shapes — loading each, a short decode at two batch widths (the prompt pass and
   the per-token step apart) through the stages' own decoder, an SFT and a PPO training pass, a reward-model
   step, each timed after an untimed one (a first pass pays one-off set-up a stage pays once). Seconds, not
   minutes: on the quiet 2-core machine 6–8 s for the tiny model (28 s when the machine was busy), ~20 s for the
   shipped 135M model with AVX-512 and bf16, ~31 s on an AVX2-only one (3 % of the tutor recipe's 15 minutes).
   Why a probe rather than timing each stage's
   first steps: a stage takes a count, fixed when it starts (PPO alone also takes a deadline), so its own
   first steps come too late to size it; SFT, the first stage, would run blind.
2. Re-plan (:meth:`Planner.plan`, before each stage): the stages left are planned from the seconds the
   budget clock has left, with rates corrected by what the finished stages took (:meth:`Planner.measured`:
   their ``.done.json`` seconds and ``metrics.jsonl`` step times): SFT's steps correct the training rate
   (PPO's passes too), sampling the decoding rate, the reward model's steps its rate; PPO's updates and every stage's seconds
   outside its steps are used as measured in later rounds.
3. Probe again (:meth:`Planner.measured`): SFT, sampling or the reward model running more than LOAD_CHANGE×
   faster or slower than the rates said ran on a machine whose load has changed since the probe (a probe taken
   while another job ran, or a job started beside the run). One kind's correction does not carry to the others
   (a busy spell slows each kind of work by its own factor: one measured here slowed the probe's decoding 10×
   and left its training pass as on a quiet machine), so the probe runs again and every rate
   comes from the machine as it is now; at most MAX_REPROBES times a run. On a quiet machine they land within
   0.7–1.1× of the rates. Sampling is judged batch by batch at the token steps each batch ran
   (:func:`decoding_ratio`), not by its seconds: its answers end at EOS, sooner or later than the SFT answers' lengths
   the rates assume. PPO is not judged: its speed also measures how short its answers are (the asr recipe's 11-token
   transcripts made PPO 2.6× faster than its rates on a quiet machine).

The cost model: a stage's seconds = fixed (loading, saving, its closing evaluation) + its count × a unit.
  sft     steps    batch_size examples at the data's padded width × the training rate per token
  sample  prompts  k rows each, decoded in batches of batch_size × k rows until the batch's longest answer ends (as
                   long as the SFT answers' batches, at most max_new_tokens: :func:`answer_steps`; PPO too, and eval
                   to max_new_tokens)
  rm      steps    batch_size prompts × k responses at their padded width × the reward model's rate
  ppo     updates  a rollout (decode batch_size rows, then reference, policy and reward passes) and
                   ppo_epochs training passes; with eval_prompts, a held-out evaluation every eval_every
  eval    prompts  samples_per_prompt answers from each of the models (SFT and each tuned policy: 2 unless several
                   algorithms ran), their KL and reward passes; fixed: loading the models, perplexity, the report
Decoding a batch of b rows: b × its prompt tokens × the prefill rate + new tokens × (a step + b × a row);
a forward pass costs FORWARD_SHARE of a training pass (forward + backward) per token.

A plan aims at AIM of the budget. By default the split favours PPO: sft, sample, rm and eval share at most
NON_PPO_SHARE of it (a recipe's ``ppo_share`` s makes it 1 − s), all at one factor of their counts (never above the
recipe's count, never below MINIMUM); PPO gets the rest: a deadline (the rest less its own loading, saving and held-out evaluations;
PPO then stops after the update that leaves no room for another, judged from its own mean update) and
max_steps = the updates the deadline fits × PPO_HEADROOM (at least PPO_MIN_STEPS), so a unit estimate on the slow
side leaves no minutes unused: the deadline, not the count, ends PPO. An override ``ppo: {max_steps: N}`` caps it. Eval comes last and cannot be cut
short after the fact, so its seconds are reserved from the measured rates before PPO's deadline is set,
and it is planned again, from what PPO left, before it starts.
"""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlhfkit.config import ConfigError

console = Console(stderr=True)

STAGES = ("sft", "sample", "rm", "ppo", "eval")
COUNTS = {"sft": "max_steps", "sample": "limit", "rm": "max_steps", "ppo": "max_steps", "eval": "max_prompts"}  # a plan sets
UNITS = {"sft": "steps", "sample": "prompts", "rm": "steps", "ppo": "updates", "eval": "prompts"}
# sft + sample + rm + eval at most: PPO keeps 40 %, its share when the tutor recipe ran on the machine it was sized on
NON_PPO_SHARE = 0.6
DEFAULT_PPO_SHARE = round(1 - NON_PPO_SHARE, 4)  # a recipe's ppo_share unless it sets one
# The least that keeps each stage doing its job: SFT a step past the first, one sampling batch (the reward
# model then holds out a prompt), a few reward-model steps, a few eval prompts (PPO: one update, always).
MINIMUM = {"sft": 3, "sample": 8, "rm": 4, "eval": 4}
PPO_HEADROOM = 3.0  # max_steps above the updates the deadline is predicted to fit: the deadline ends PPO
# ... and never fewer than this many: an estimate from rates a busy spell slowed can say none fit (a demo's probe
# under load said 400 s an update; PPO then made 45-s updates, and its max_steps of 1 left 2 of its 4 minutes unused)
PPO_MIN_STEPS = 8
# SFT, sampling (per token step) or the reward model this many times faster or slower than its rates measured a
# changed machine: probe again. Quiet runs' SFT and reward-model steps land at 0.7–1.1× their rates.
LOAD_CHANGE = 2.0
# stages of known shapes (sampling: each batch judged at the token steps it ran); PPO's speed is no sign, its
# answers end early at EOS and its updates are not logged by shape
REPROBE_AFTER = ("sft", "sample", "rm")
MAX_REPROBES = 2
# Plans end at AIM × the budget: the rest is for the estimates' error and the seconds before the budget clock
# starts (Python and torch imports, ~4 s); a 1.5-minute tiny-model run aimed at 100 % ended at 109 %.
AIM = 0.95
# Sampling stops at STAGE_SLACK × its planned seconds (the pipeline sets its deadline): on a machine slower than
# its probe (busy, throttled) the reward model gets fewer prompts and the later stages keep their minutes.
STAGE_SLACK = 1.25
FORWARD_SHARE = 1 / 3  # a forward pass's share of a training pass (the backward costs about twice the forward)
REPORT_S = 5.0  # the report and the summary after eval (matplotlib figures; bench/RESULTS.md has the measured time)
PROBE_TOKENS = 10  # decode steps timed past the first
PROBE_SHARE = 0.5  # of a training batch in the probe's timed steps, scaled by tokens to the batch (a few rows run far
#                   slower per token than a batch, so the probe's batch is not made tiny)
PPO_PROBE_SHARE = 0.125  # PPO's rollout batch, the largest (32 × ~220 tokens in the tutor recipe): an eighth, timed warm
PROBE_RECORDS = 64  # records read for the data's lengths
ANSWER_RECORDS = 512  # SFT answers whose lengths predict how long a batch decodes


@dataclass
class Rates:
    """Seconds per piece of work on this machine (the probe's, corrected by finished stages) and the data's shapes."""

    load_s: float  # loading the starting model and its tokenizer
    rm_load_s: float  # loading the reward model's backbone and its tokenizer
    prefill_token_s: float  # decoding: the prompt pass, per prompt token of a row
    step_s: float  # decoding: one token step, per batch (the weights are read once a step)
    step_row_s: float  # decoding: one token step, per row of the batch
    train_token_s: float  # a policy training pass (forward + backward) per token, at SFT's precision
    ppo_token_s: float  # PPO's training pass per token of prompt + response (log-probs of the response tokens only)
    train_opt_s: float  # the optimiser step (and gradient clip) after it
    rm_token_s: float  # a reward-model training pass per token
    rm_opt_s: float
    prompt_tokens: float  # prompts.jsonl: padded prompt width of a batch (chat template applied)
    eval_prompt_tokens: float  # eval.jsonl: the same
    sft_width: float  # padded width of an SFT batch
    rm_width: float  # padded width of a reward-model batch (prompt + a response of max_new_tokens)
    n_prompts: int
    n_eval: int
    n_sft_heldout: int  # SFT's held-out examples (eval's perplexity runs on them)
    # the SFT answers' tokens (EOS included), in file order: a model tuned on them answers about as long, and a batch
    # decodes until its longest answer ends (empty: every batch runs to max_new_tokens)
    answer_tokens: list = field(default_factory=list)
    probe_s: float = 0.0  # what the probe took
    # corrections from finished stages: measured ÷ predicted per kind of work (SFT corrects PPO's passes too)
    scale: dict = field(default_factory=lambda: {"train": 1.0, "decode": 1.0, "rm": 1.0})
    fixed: dict = field(default_factory=dict)  # a finished stage's seconds outside its steps (later rounds use them)
    ppo_update_s: float | None = None  # measured: PPO's mean update
    ppo_eval_s: float | None = None  # measured: one of PPO's held-out evaluations
    measured_by: dict = field(default_factory=dict)  # which stage corrected which rate (for the plan's "why")


def padded_width(lengths: list[int], batch: int) -> float:
    """Mean width of batches of ``batch`` consecutive sequences, each padded to its longest."""
    chunks = [lengths[i:i + batch] for i in range(0, len(lengths), max(batch, 1))]
    return sum(max(c) for c in chunks) / max(len(chunks), 1)


# ------------------------------------------------------------------------------------------ the cost model


def answer_steps(r: Rates, max_new_tokens: int, rows: int) -> int:
    """Token steps a batch of ``rows`` answers decodes: its longest answer's, as the SFT answers' batches of that
    many run (the asr recipe's transcripts: 17 of its 40 max_new_tokens), never above max_new_tokens. Sampling's and
    PPO's estimate (both are measured as they run); eval's reserve keeps max_new_tokens."""
    if not r.answer_tokens:
        return max_new_tokens
    return min(max_new_tokens, math.ceil(padded_width(r.answer_tokens, rows)))


def decode_batch_s(r: Rates, rows: int, prompt_tokens: float, steps: int) -> float:
    """Seconds to decode one batch of ``rows`` rows for ``steps`` token steps, before any correction."""
    return rows * prompt_tokens * r.prefill_token_s + steps * (r.step_s + rows * r.step_row_s)


def decode_s(r: Rates, rows: int, prompt_tokens: float, new_tokens: int, batch: int) -> float:
    """Seconds to sample ``rows`` answers of ``new_tokens`` tokens, ``batch`` rows at a time."""
    full, rest = divmod(rows, max(batch, 1))
    seconds = full * decode_batch_s(r, batch, prompt_tokens, new_tokens)
    if rest:
        seconds += decode_batch_s(r, rest, prompt_tokens, new_tokens)
    return r.scale["decode"] * seconds


def train_s(r: Rates, tokens: float) -> float:
    return r.scale["train"] * tokens * r.train_token_s


def ppo_train_s(r: Rates, tokens: float) -> float:
    return r.scale["train"] * tokens * r.ppo_token_s


def rm_train_s(r: Rates, tokens: float) -> float:
    return r.scale["rm"] * tokens * r.rm_token_s


def ppo_eval_once_s(r: Rates, ppo: dict, n_dev: int) -> float:
    """One of PPO's held-out evaluations: a rollout of each dev prompt, no training."""
    if not n_dev:
        return 0.0
    if r.ppo_eval_s is not None:
        return r.ppo_eval_s
    steps = answer_steps(r, ppo["max_new_tokens"], ppo["batch_size"])
    tokens = n_dev * (r.prompt_tokens + steps)
    return (decode_s(r, n_dev, r.prompt_tokens, steps, ppo["batch_size"])
            + FORWARD_SHARE * (2 * ppo_train_s(r, tokens) + rm_train_s(r, n_dev * r.rm_width)))


def stage_seconds(stage: str, n: int, sec: dict, r: Rates, n_dev: int = 0, n_models: int = 2) -> tuple[float, float]:
    """(fixed seconds, seconds for ``n`` units) of one run of ``stage`` with the section ``sec`` (its config keys);
    ``n_models``: the models eval compares (the SFT model and each tuned policy)."""
    if stage == "sft":
        # fixed: loading, saving and merging (about a load), the held-out loss at the end
        fixed = r.fixed.get("sft", 2 * r.load_s + FORWARD_SHARE * train_s(r, r.n_sft_heldout * r.sft_width))
        return fixed, n * (train_s(r, sec["batch_size"] * r.sft_width) + r.scale["train"] * r.train_opt_s)
    if stage == "sample":
        k = sec["k"]
        fixed = r.fixed.get("sample", r.load_s)
        rows = sec["batch_size"] * k
        return fixed, decode_s(r, n * k, r.prompt_tokens, answer_steps(r, sec["max_new_tokens"], rows), rows)
    if stage == "rm":
        # fixed: loading, saving, reward_stats (the scores of stats_samples responses)
        stats = FORWARD_SHARE * rm_train_s(r, sec["stats_samples"] * r.rm_width)
        fixed = r.fixed.get("rm", 2 * r.rm_load_s + stats)
        return fixed, n * (rm_train_s(r, sec["batch_size"] * sec["k"] * r.rm_width) + r.scale["rm"] * r.rm_opt_s)
    if stage == "ppo":
        rows = sec["batch_size"]
        steps = answer_steps(r, sec["max_new_tokens"], rows)
        tokens = rows * (r.prompt_tokens + steps)  # the passes cut the columns past the longest answer
        # a rollout: decode, then the reference's and the policy's log-probs and the reward model's scores
        rollout = (decode_s(r, rows, r.prompt_tokens, steps, rows)
                   + FORWARD_SHARE * (2 * ppo_train_s(r, tokens) + rm_train_s(r, rows * r.rm_width)))
        training = sec["ppo_epochs"] * (ppo_train_s(r, tokens) + sec["num_minibatches"] * r.scale["train"] * r.train_opt_s)
        update = r.ppo_update_s if r.ppo_update_s is not None else rollout + training
        evals = ppo_eval_once_s(r, sec, n_dev)
        per_update = update + (evals / sec["eval_every"] if sec["eval_every"] else 0.0)
        # fixed: loading the policy and the reward model, saving; the evaluations before the first update and after the last
        fixed = r.fixed.get("ppo", 2 * r.load_s + r.rm_load_s + 2 * evals)
        return fixed, n * per_update
    if stage == "eval":
        rows = n * sec["samples_per_prompt"]
        # max_new_tokens, not the SFT answers' lengths: a tuned policy may stop ending its answers, and eval, last,
        # cannot be cut short
        steps = sec["max_new_tokens"]
        tokens = rows * (r.eval_prompt_tokens + steps)
        # each model's answers (sft and the tuned ones); KL (log-probs under each tuned model and the reference);
        # reward-model scores of all
        sampled = n_models * decode_s(r, rows, r.eval_prompt_tokens, steps, sec["batch_size"])
        passes = FORWARD_SHARE * n_models * (train_s(r, tokens) + rm_train_s(r, rows * r.rm_width))
        best = 0.0
        if sec.get("best_of"):
            best = (decode_s(r, rows * sec["best_of"], r.eval_prompt_tokens, steps, sec["batch_size"])
                    + FORWARD_SHARE * sec["best_of"] * rm_train_s(r, rows * r.rm_width))
        # fixed: loading the reference (and its bf16 copy), each tuned model and the reward model; every model's
        # perplexity; the report
        ppl = FORWARD_SHARE * n_models * train_s(r, r.n_sft_heldout * r.sft_width)
        return (1 + n_models) * r.load_s + r.rm_load_s + ppl + REPORT_S, sampled + passes + best
    raise ValueError(f"{stage}: no cost model")


# ------------------------------------------------------------------------------------------ the plan


def stage_keys(stage: str, section: dict) -> dict:
    """A section with its config's defaults under it: every key the cost model reads."""
    from rlhfkit.config import EvalConfig, PPOConfig, RewardConfig, SampleConfig, SFTConfig

    cls = {"sft": SFTConfig, "sample": SampleConfig, "rm": RewardConfig, "ppo": PPOConfig, "eval": EvalConfig}[stage]
    return {**asdict(cls()), **section}


def cost_keys(sections: dict) -> dict:
    """Every stage's keys for the cost model; a reward-model step scores batch_size prompts × sampling's k candidates."""
    keys = {s: stage_keys(s, sections[s]) for s in STAGES}
    keys["rm"]["k"] = keys["sample"]["k"]
    return keys


def count_caps(sections: dict, r: Rates) -> dict:
    """Each stage's count as its section gives it: the most a plan gives it (``limit``/``max_prompts`` 0: all)."""
    caps = {s: sections[s].get(COUNTS[s]) for s in ("sft", "rm", "ppo")}
    caps["sample"] = min(sections["sample"].get("limit") or r.n_prompts, r.n_prompts)
    caps["eval"] = min(sections["eval"].get("max_prompts") or r.n_eval, r.n_eval)
    return caps


def make_plan(sections: dict, r: Rates, budget_s: float, spent_s: float, left: dict, *, ppo_spent_s: float = 0.0,
              held: dict | None = None, ppo_cap: int | None = None, deadline: bool = True, n_dev: int = 0,
              eval_reserve_s: float | None = None, n_models: int = 2, non_ppo_share: float = NON_PPO_SHARE) -> dict:
    """Counts for the stages with runs ``left`` (stage → runs to go) that end at AIM × the budget; deterministic.

    ``spent_s``: the budget clock's seconds so far, ``ppo_spent_s`` of them PPO's. ``held``: stages whose count
    is fixed (a resumed stage keeps the count it started with). ``ppo_cap``: the most PPO updates (None: what
    fits). ``deadline`` False: PPO runs its held count whatever the time. ``n_dev``: PPO's held-out prompts.
    ``eval_reserve_s``: seconds kept for eval (its count as given) instead of its estimate. ``n_models``: the
    models eval compares. With several algorithms, ``left["ppo"]`` counts their slots. ``non_ppo_share``: the
    most of the budget sft, sample, rm and eval share while PPO has runs left.
    """
    held = dict(held or {})
    goal = AIM * budget_s
    keys = cost_keys(sections)
    caps = count_caps(sections, r)
    if eval_reserve_s is not None:
        held["eval"] = caps["eval"]  # the user's reserve: eval runs its count in it
    remaining = goal - spent_s
    ppo_left = left.get("ppo", 0)
    ppo_fixed, ppo_one = stage_seconds("ppo", 1, keys["ppo"], r, n_dev)

    def cost(stage: str, n: int) -> float:  # seconds of the runs left at count n
        if stage == "eval" and eval_reserve_s is not None:
            return eval_reserve_s
        fixed, variable = stage_seconds(stage, n, keys[stage], r, n_models=n_models)
        return left[stage] * (fixed + variable)

    # sft, sample, rm and eval: one factor g of their counts, the largest that fits their share
    scaled = [s for s in ("sft", "sample", "rm", "eval") if left.get(s)]
    if ppo_left:  # their share of the budget, and never so much that PPO cannot make one update a round
        target = min(non_ppo_share * goal - (spent_s - ppo_spent_s), remaining - ppo_left * (ppo_fixed + ppo_one))
    else:
        target = remaining

    def counts_at(g: float) -> dict:
        out = {}
        for s in scaled:
            lo = min(MINIMUM[s], caps[s])
            out[s] = held[s] if s in held else min(caps[s], max(lo, math.ceil(caps[s] * g)))
        return out

    def total(g: float) -> float:
        return sum(cost(s, n) for s, n in counts_at(g).items())

    lo, hi = 0.0, 1.0
    if total(1.0) <= target:
        lo = 1.0
    else:
        for _ in range(40):  # bisection: total(g) only grows with g
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) <= target else (lo, mid)
    g = lo
    counts = counts_at(g)
    predicted = {s: cost(s, n) for s, n in counts.items()}
    notes = []
    if total(0.0) > target:
        notes.append(f"the minimum counts of {', '.join(scaled)} need {total(0.0) / 60:.1f} min here, more than the "
                     f"{max(target, 0) / 60:.1f} min they may take of the budget")

    # PPO: the rest — a deadline a round, and the updates it fits × PPO_HEADROOM as max_steps
    plan: dict = {"budget_s": round(budget_s, 1), "aim_s": round(goal, 1), "spent_s": round(spent_s, 1), "scaled": scaled,
                  "factor": round(g, 3), "target_s": round(target, 1), "non_ppo_share": round(non_ppo_share, 4), "stages": {}}
    if ppo_left:
        reserve = sum(predicted.values()) + ppo_left * ppo_fixed  # after this PPO: later rounds, eval, PPO's own fixed seconds
        slot = (remaining - reserve) / ppo_left  # a round's deadline, from PPO's first update
        fits = max(0, math.floor(slot / ppo_one)) if ppo_one > 0 else 0
        n_ppo = held["ppo"] if "ppo" in held else max(PPO_MIN_STEPS, math.ceil(fits * PPO_HEADROOM))
        if ppo_cap is not None:
            n_ppo = min(n_ppo, ppo_cap)
        counts["ppo"] = n_ppo
        runs = min(n_ppo, max(fits, 1)) if deadline else n_ppo  # the updates PPO is predicted to make
        predicted["ppo"] = ppo_left * (ppo_fixed + ppo_one * runs)
        plan.update(ppo_reserve_s=round(reserve, 1), ppo_deadline_s=round(max(slot, 0.0), 1), ppo_fits=fits)
        if fits < 1 and deadline:
            notes.append(f"PPO: one update (~{ppo_one:.0f} s) does not fit the {max(slot, 0):.0f} s left to it; it makes one anyway")
    end = spent_s + sum(predicted.values())
    if end > budget_s * 1.1:
        notes.append(f"predicted end {end / 60:.1f} min: this machine's floor for the recipe's shapes is above the budget")
    for s, n in counts.items():
        fixed, variable = stage_seconds(s, n, keys[s], r, n_dev if s == "ppo" else 0, n_models)
        plan["stages"][s] = {"count_key": COUNTS[s], "count": n, "cap": caps[s] if s != "ppo" else ppo_cap,
                             "runs": left[s], "fixed_s": round(fixed, 1), "unit_s": round(variable / max(n, 1), 2),
                             "predicted_s": round(predicted[s], 1),
                             "why": why(s, n, caps[s] if s != "ppo" else ppo_cap, fixed, variable / max(n, 1), predicted[s],
                                        r, s in held, plan, eval_reserve_s, deadline)}
    plan["predicted_end_s"] = round(end, 1)
    plan["notes"] = notes
    return plan


def why(stage: str, n: int, cap: int | None, fixed: float, unit: float, predicted: float, r: Rates, held: bool,
        plan: dict, eval_reserve_s: float | None, deadline: bool) -> str:
    """The plan's reason for one stage's count, in words."""
    source = {"sft": r.measured_by.get("train", "probe"), "sample": r.measured_by.get("decode", "probe"),
              "rm": r.measured_by.get("rm", "probe"), "ppo": r.measured_by.get("ppo", "estimate from the probe's rates"),
              "eval": r.measured_by.get("decode", "probe")}[stage]
    what = {"sft": "SFT step", "sample": "prompt sampled", "rm": "RM step", "ppo": "PPO update", "eval": "eval prompt"}[stage]
    head = f"{unit:.2f} s per {what} ({source}) + {fixed:.0f} s fixed"
    if stage == "ppo" and not deadline:
        return f"{head}; no deadline (deadline: false): the count as given"
    if stage == "eval" and eval_reserve_s is not None:
        return f"{eval_reserve_s / 60:.1f} min reserved (eval_reserve_minutes): the count as given"
    if held:
        return f"{head}; resumed: keeps the count it started with"
    if stage == "ppo":
        text = (f"{head}: {plan['ppo_fits']} fit its {plan['ppo_deadline_s'] / 60:.1f}-min deadline; "
                f"max_steps ×{PPO_HEADROOM:g}, the deadline ends it")
        return text + (f" (capped at {cap})" if cap is not None and n == cap else "")
    limit = ("the recipe's count" if n == cap else "the minimum" if n == min(MINIMUM[stage], cap)
             else f"{plan['factor']:.0%} of {cap}")
    return f"{head} → {n} {UNITS[stage]} ({limit}) fit {predicted / 60:.1f} min"


def print_plan(plan: dict, at: str, done: dict) -> None:
    """The plan as a table: each stage's count, predicted minutes and why; finished stages with what they took."""
    t = Table(title=f"budget plan before {at}: {plan['budget_s'] / 60:g} min budget, {plan['spent_s'] / 60:.1f} spent, "
                    f"end predicted at {plan['predicted_end_s'] / 60:.1f}", title_justify="left")
    for col in ("stage", "count", "predicted", "why"):
        t.add_column(col)
    for stage, seconds in done.items():
        t.add_row(stage, "done", f"{seconds / 60:.1f} min", "measured")
    for stage, row in plan["stages"].items():
        runs = f" × {row['runs']} rounds" if row["runs"] > 1 else ""
        t.add_row(stage, f"{row['count_key']} {row['count']}{runs}", f"{row['predicted_s'] / 60:.1f} min", row["why"])
    console.print(t)
    share = f" (at most {plan['non_ppo_share']:.0%} of the budget); PPO gets the rest" if "ppo_deadline_s" in plan else " (what is left)"
    console.print(f"pipeline: {', '.join(plan['scaled'])} at {plan['factor']:.0%} of their counts to fit "
                  f"{max(plan['target_s'], 0) / 60:.1f} min{share}"
                  + (f": a {plan['ppo_deadline_s'] / 60:.1f}-min deadline a round" if "ppo_deadline_s" in plan else ""))
    for note in plan["notes"]:
        console.print(f"[yellow]pipeline: budget: {note}[/yellow]")


# ------------------------------------------------------------------------------------------ measuring


def probe(sections: dict, model: str, folder: Path, threads: int = 0) -> Rates:
    """Time the starting model and the reward backbone at the recipe's shapes (see the module docstring)."""
    import torch

    from rlhfkit.accel import speed_up
    from rlhfkit.accel.precision import autocast, resolve_precision, sampling_copy
    from rlhfkit.accel.runtime import set_threads
    from rlhfkit.config import PPOConfig, RewardConfig, SampleConfig, SFTConfig, from_dict
    from rlhfkit.data.formats import prompt_messages, read_records, sft_pair
    from rlhfkit.data.tokenize import IGNORE_INDEX, collate_right, encode_prompt, encode_response, encode_sft, left_pad
    from rlhfkit.models.generation import sampling_kwargs, uses_our_sampler
    from rlhfkit.models.lm_loss import response_loss
    from rlhfkit.models.loading import add_lora, load_causal_lm, load_tokenizer, resolve
    from rlhfkit.models.reward import RewardModule, build_reward_model, rm_inputs
    from rlhfkit.models.rollout import forward_tokens, sample

    t_probe = time.perf_counter()
    set_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sft = from_dict(SFTConfig, sections["sft"], "sft")
    smp = from_dict(SampleConfig, sections["sample"], "sample")
    rmc = from_dict(RewardConfig, sections["rm"], "rm")
    ppo = from_dict(PPOConfig, sections["ppo"], "ppo")
    evc = stage_keys("eval", sections["eval"])

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    import transformers  # noqa: F401  (imported once per process, whichever stage comes first: not a load's cost)

    prompts = read_records(folder / "prompts.jsonl", "prompt")
    evals = read_records(folder / "eval.jsonl", "prompt")
    sft_records = read_records(folder / "sft.jsonl", "sft")
    tok, lm = None, None

    def load() -> None:
        nonlocal tok, lm
        tok, lm = load_tokenizer(model), load_causal_lm(model)

    if not model.startswith("tiny"):
        # a fresh machine converts the shipped model once (its first load): not what every stage's load costs
        resolve(model)
    # the first load reads the weights from disk (on a cold page cache 15 s against 2.4 s warm for the shipped model,
    # measured); every stage after the probe finds them cached, so the second load is what each of theirs costs
    load()
    tok, lm = None, None  # one copy at a time
    gc.collect()
    load_s = timed(load)
    prompt_ids = [encode_prompt(tok, prompt_messages(p), smp.chat) for p in prompts[:PROBE_RECORDS]]
    eval_ids = [encode_prompt(tok, prompt_messages(p), evc["chat"]) for p in evals[:PROBE_RECORDS]]
    examples = [encode_sft(tok, *sft_pair(x), sft.max_len, sft.max_prompt_len) for x in sft_records]

    # decoding: t(b rows, n tokens) = b × width × prefill + n × (step + b × row), timed at (R, 1), (R, 1 + D), (R/8, 1 + D)
    # by the stages' own decoder (generate_ids's choice: our loop, where the K rows of a prompt share its pass, so the
    # prefill rate is per row at sampling's K; or transformers' generate), set up as sampling sets it up
    sampler = sampling_copy(lm, smp.precision, device.type).to(device)
    speed_up(sampler, device=device, head_apart=True)
    rows = [p for p in prompt_ids[:smp.batch_size] for _ in range(smp.k)]
    small = rows[:max(1, len(rows) // 8)]

    @torch.inference_mode()
    def decode(batch: list[list[int]], n: int) -> None:
        ids, attn = left_pad(batch, tok.pad_token_id)
        ids, attn = ids.to(device), attn.to(device)
        if uses_our_sampler(smp.temperature, smp.top_p, smp.top_k):  # EOS -1: every row runs n steps
            sample(sampler, ids, attn, n, smp.temperature, eos_id=-1, pad_id=tok.pad_token_id)
        else:
            sampler.generate(input_ids=ids, attention_mask=attn, max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             **sampling_kwargs(smp.temperature, smp.top_p, smp.top_k))

    # warm-up at the full batch: the first pass of a shape pays one-off set-up (kernels, fresh memory); timed without
    # it, one AVX2-only machine's fit read the prompt pass ~2 s slow and the token steps as nearly free
    decode(rows, 1)
    a = timed(lambda: decode(rows, 1))
    b = timed(lambda: decode(rows, 1 + PROBE_TOKENS))
    c = timed(lambda: decode(small, 1 + PROBE_TOKENS))
    width, width_small = max(map(len, rows)), max(map(len, small))
    step_big = (b - a) / PROBE_TOKENS  # one token step at len(rows) rows
    prefill_token_s = max(a - step_big, 0.0) / (len(rows) * width)
    step_small = max(c - len(small) * width_small * prefill_token_s, 0.0) / (1 + PROBE_TOKENS)
    step_row_s = max(step_big - step_small, 0.0) / (len(rows) - len(small)) if len(rows) > len(small) else 0.0
    step_s = max(step_big - len(rows) * step_row_s, 0.0)
    del sampler

    # a training step at SFT's precision (LoRA as SFT trains it) on PROBE_SHARE of its batch, timed after an untimed
    # pass of the same batch: a first pass pays one-off set-up that a stage pays once, not every step (on an
    # AVX2-only machine the first SFT pass ran 1.5× and the first PPO pass 2.4× the next one's seconds per token)
    if sft.lora:
        lm = add_lora(lm, sft.lora_r, sft.lora_alpha, sft.lora_dropout, sft.lora_targets)
    speed_up(lm, device=device)
    lm.to(device).train()
    precision = resolve_precision(sft.precision, device.type)

    def train_step_s(params: list, clip: float, passes) -> tuple[float, float]:
        """(forward + backward, optimiser) seconds of one training step; the optimiser is timed at its second
        step, as the first allocates its state (once a run)."""
        opt = torch.optim.AdamW(params, lr=1e-6, fused=True)  # as the stages' (run.py); the probe's weights are thrown away
        passes()  # warm-up
        opt.zero_grad(set_to_none=True)
        passes_s = timed(passes)
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return passes_s, timed(lambda: (torch.nn.utils.clip_grad_norm_(params, clip), opt.step()))

    batch = collate_right(examples[:max(1, round(sft.batch_size * PROBE_SHARE))], tok.pad_token_id)
    batch = {k: v.to(device) for k, v in batch.items()}

    def sft_passes() -> None:  # SFT's own loss: cross-entropy on the response tokens
        with autocast(precision, device.type):
            loss, n = response_loss(lm, batch)
        (loss / max(n, 1)).backward()

    passes_s, train_opt_s = train_step_s([p for p in lm.parameters() if p.requires_grad], sft.grad_clip, sft_passes)
    train_token_s = passes_s / batch["input_ids"].numel()

    # PPO's training pass (the same model: LoRA as PPO trains it) on PPO_PROBE_SHARE of its rollout batch, each prompt
    # samples_per_prompt times in a row as the stage lays them (rows that repeat a prompt share its pass)
    n_ppo = max(1, round(ppo.batch_size * PPO_PROBE_SHARE))
    k = max(1, ppo.samples_per_prompt)
    query, query_mask = left_pad([prompt_ids[i // k][-ppo.max_prompt_len:] for i in range(n_ppo)], tok.pad_token_id)
    response = torch.randint(0, len(tok), (len(query), ppo.max_new_tokens))
    ppo_precision = resolve_precision(ppo.precision, device.type)

    def ppo_passes() -> None:
        with autocast(ppo_precision, device.type):
            logprobs, _ = forward_tokens(lm, query.to(device), query_mask.to(device), response.to(device),
                                         torch.ones_like(response).to(device), ppo.temperature)
        logprobs.sum().backward()

    ppo_passes()  # warm-up
    lm.zero_grad(set_to_none=True)
    ppo_token_s = timed(ppo_passes) / (query.numel() + response.numel())
    del lm
    gc.collect()

    # a reward-model step on PROBE_SHARE of its batch's rows (prompt, a response of max_new_tokens), after a warm-up pass
    rm_tok, rm = None, None

    def load_rm() -> None:
        nonlocal rm_tok, rm
        rm_tok, rm = load_tokenizer(rmc.model), RewardModule(build_reward_model(rmc, None))

    rm_load_s = timed(load_rm)
    speed_up(rm, device=device)
    rm.to(device).train()
    rm_precision = resolve_precision(rmc.precision, device.type)
    responses = [tok.decode(encode_response(tok, sft_pair(x)[1], add_eos=False)[:smp.max_new_tokens])
                 for x in sft_records[:PROBE_RECORDS]]
    pairs = prompts[:len(responses)]
    n_rows = max(1, round(rmc.batch_size * smp.k * PROBE_SHARE))
    inputs = {k: v.to(device) for k, v in rm_inputs(rm_tok, pairs[:n_rows], responses[:n_rows], rmc.max_len).items()}

    def rm_passes() -> None:
        with autocast(rm_precision, device.type):
            rm(**inputs).sum().backward()

    rm_passes_s, rm_opt_s = train_step_s([p for p in rm.parameters() if p.requires_grad], rmc.grad_clip, rm_passes)
    rm_token_s = rm_passes_s / inputs["input_ids"].numel()
    rm_lengths = rm_inputs(rm_tok, pairs, responses, rmc.max_len)["attention_mask"].sum(1).tolist()
    del rm
    gc.collect()

    return Rates(
        load_s=load_s, rm_load_s=rm_load_s, prefill_token_s=prefill_token_s, step_s=step_s, step_row_s=step_row_s,
        train_token_s=train_token_s, ppo_token_s=ppo_token_s, train_opt_s=train_opt_s, rm_token_s=rm_token_s, rm_opt_s=rm_opt_s,
        prompt_tokens=padded_width([len(p) for p in prompt_ids], smp.batch_size * smp.k),
        eval_prompt_tokens=padded_width([len(p) for p in eval_ids], evc["batch_size"]),
        sft_width=padded_width([len(e.input_ids) for e in examples], sft.batch_size),
        rm_width=padded_width(rm_lengths, rmc.batch_size * smp.k),
        n_prompts=len(prompts), n_eval=len(evals), n_sft_heldout=int(round(len(sft_records) * sft.eval_fraction)),
        answer_tokens=[sum(t != IGNORE_INDEX for t in e.labels) for e in examples[:ANSWER_RECORDS]],
        probe_s=time.perf_counter() - t_probe)


def measured_ratio(r: Rates, stage: str, seconds: float, steps: list[float], units: int, sections: dict) -> float | None:
    """How many times the rates' prediction a finished stage's work took (None: nothing to compare).

    SFT and the reward model: their typical step (the mean past the first, which carries one-off set-up);
    sampling: its seconds outside the fixed cost, for ``units`` prompts; PPO: its typical update.
    """
    typical = (sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else steps[0]) if steps else None
    keys = cost_keys(sections)[stage]
    if stage in ("sft", "rm", "ppo") and typical:
        _, predicted = stage_seconds(stage, 1, keys, r)  # PPO: no held-out prompts, so an update alone
        return typical / predicted
    if stage == "sample" and units:
        fixed, predicted = stage_seconds("sample", units, keys, r)
        return max(seconds - fixed, 0.1 * predicted) / predicted
    return None


def decoding_ratio(r: Rates, batches: list[dict]) -> float | None:
    """How many times the rates' prediction sampling's batches took, each at the token steps it ran (None: no
    batch logged its steps). Unlike :func:`measured_ratio`, answers that end early at EOS do not count as speed:
    a machine faster or slower than the probe found it shows here as it does in SFT's steps."""
    logged = [b for b in batches if b.get("decode_steps")]
    typical = logged[1:] or logged  # the first batch carries one-off set-up
    if not typical:
        return None
    predicted = sum(decode_batch_s(r, b["rows"], b["prompt_tokens"], b["decode_steps"]) for b in typical)
    return sum(b["time_step_s"] for b in typical) / (r.scale["decode"] * predicted)


def corrected(r: Rates, stage: str, seconds: float, steps: list[float], units: int, sections: dict,
              evals: list[float] | None = None) -> Rates:
    """``r`` with what a finished stage took in place of the predictions for its kind of work.

    ``steps``: its step times (metrics.jsonl's time_step_s); ``units``: its count; ``evals``: PPO's held-out
    evaluation times. A step time is the mean past the first step (the first carries one-off set-up); the
    rest of the stage's seconds are its fixed cost.
    """
    r = Rates(**{**asdict(r), "scale": dict(r.scale), "fixed": dict(r.fixed), "measured_by": dict(r.measured_by)})
    typical = (sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else steps[0]) if steps else None
    ratio = measured_ratio(r, stage, seconds, steps, units, sections)
    if stage in ("sft", "rm") and ratio:
        kind = "train" if stage == "sft" else "rm"
        r.scale[kind] *= ratio
        r.fixed[stage] = max(seconds - typical * len(steps), 0.0)
        r.measured_by[kind] = f"measured by {stage}"
    elif stage == "sample" and ratio:
        r.scale["decode"] *= ratio
        r.measured_by["decode"] = "measured by sampling"
    elif stage == "ppo" and typical:
        r.ppo_update_s = typical
        r.ppo_eval_s = sum(evals) / len(evals) if evals else r.ppo_eval_s
        r.fixed["ppo"] = max(seconds - sum(steps) - sum(evals or []), 0.0)
        r.measured_by["ppo"] = "measured by PPO"
    return r


class Planner:
    """The plans of one run folder: the probe's rates, their corrections by finished stages, and ``plan.json``.

    ``plan.json``: ``probe`` (the rates as the probe last measured them), ``started`` (the count each stage
    started with: a resumed stage keeps it), ``plans`` (every plan made, in order, each with its rates and
    reasons) and ``reprobes`` (each probe after the first: the stage that called for it and why).
    """

    def __init__(self, out: Path, sections: dict, budget_minutes: float, rounds: int = 1, *, ppo_cap: int | None = None,
                 deadline: bool = True, eval_reserve_minutes: float | None = None, n_dev: int = 0, policies: int = 1,
                 ppo_share: float = DEFAULT_PPO_SHARE):
        self.path = out / "plan.json"
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path}: line {e.lineno}: not valid JSON ({e.msg}); delete it to measure this "
                              "machine again (the stages' own outputs are untouched)") from None
        self.saved_probe: dict | None = saved.get("probe")
        self.started: dict = saved.get("started", {})
        self.plans: list = saved.get("plans", [])
        self.reprobes: list = saved.get("reprobes", [])
        self.sections, self.budget_s, self.rounds = sections, 60 * budget_minutes, rounds
        self.ppo_cap, self.deadline, self.n_dev = ppo_cap, deadline, n_dev
        self.non_ppo_share = 1 - ppo_share  # sft, sample, rm and eval's most, while PPO has runs left
        self.eval_reserve_s = None if eval_reserve_minutes is None else 60 * eval_reserve_minutes
        # policies: the algorithms trained side by side from one round's feedback, each a slot of PPO's share
        self.left = {"sft": 1, "sample": rounds, "rm": rounds, "ppo": rounds * policies, "eval": 1}
        self.n_models = 1 + policies  # eval's: the SFT model and each tuned policy
        self.done: dict[str, float] = {}  # finished stages' seconds, for the table
        self.ppo_spent_s = 0.0
        self.rates: Rates | None = None
        self.probe_args: tuple | None = None  # (model, recipe folder, threads): what a second probe times
        self.reprobe_due: dict | None = None  # set by measured(): the next plan probes again first

    def probe(self, model: str, folder: Path, threads: int = 0) -> Rates:
        """The probe's rates: measured now, or those an earlier run of this folder measured."""
        self.probe_args = (model, folder, threads)
        if self.saved_probe is not None:
            self.rates = Rates(**self.saved_probe)
            console.print(f"pipeline: budget: the probe's rates from {self.path} (measured when this run began)")
        else:
            self.measure()
        self.done["probe"] = self.rates.probe_s
        return self.rates

    def measure(self) -> None:
        """Run the probe (see :meth:`probe`) and keep its rates as this run's."""
        console.rule("pipeline: probe")
        self.rates = probe(self.sections, *self.probe_args)
        self.saved_probe = asdict(self.rates)
        r = self.rates
        console.print(f"pipeline: probe took {r.probe_s:.0f} s: loading {r.load_s:.1f} s (reward model {r.rm_load_s:.1f} s); "
                      f"decoding {1000 * r.step_s:.0f} ms a step + {1000 * r.step_row_s:.1f} ms a row; training "
                      f"{1000 * r.train_token_s:.2f} ms a token (reward model {1000 * r.rm_token_s:.2f} ms)")
        self.save()

    def plan(self, at: str, spent_s: float, round_no: int = 1, resuming: bool = False,
             ppo: dict | None = None) -> tuple[dict, dict]:
        """Plan the stages left as ``at`` (of round ``round_no``) is about to start: (sections with the planned
        counts, the plan). Prints the table and appends the plan to plan.json.

        ``resuming``: ``at``'s folder holds an interrupted run, which keeps the count it started with.
        ``ppo``: PPO's config keys as the pipeline runs it (its held-out evaluations cost time too).
        """
        if self.reprobe_due is not None:
            self.measure_again()
        key = f"{at}/{round_no}"
        held = {at: self.started[key]} if resuming and key in self.started else {}
        if not self.deadline:
            held["ppo"] = stage_keys("ppo", self.sections["ppo"])["max_steps"]
        sections = {**self.sections, "ppo": {**self.sections["ppo"], **(ppo or {})}}
        n_dev = self.n_dev
        if ppo is not None:
            n_dev = count_lines(ppo["eval_prompts"]) if ppo.get("eval_prompts") else 0
        left = {s: n for s, n in self.left.items() if n}
        plan = make_plan(sections, self.rates, self.budget_s, spent_s, left, ppo_spent_s=self.ppo_spent_s, held=held,
                         ppo_cap=self.ppo_cap, deadline=self.deadline, n_dev=n_dev, eval_reserve_s=self.eval_reserve_s,
                         n_models=self.n_models, non_ppo_share=self.non_ppo_share)
        plan.update(at=key, rates=asdict(self.rates))
        self.started[key] = plan["stages"][at]["count"]
        self.plans.append(plan)
        self.save()
        print_plan(plan, at + (f" (round {round_no})" if self.rounds > 1 and at in ("sample", "rm", "ppo") else ""), self.done)
        counts = {s: {**v, COUNTS[s]: plan["stages"][s]["count"]} if s in plan["stages"] else v for s, v in sections.items()}
        return counts, plan

    def measured(self, stage: str, folder: Path, label: str | None = None, units: int = 0) -> None:
        """A stage has finished (or was found finished): its seconds and step times correct the rates.

        ``units``: sampling's prompts (the other stages' counts are their logged steps).
        """
        from rlhfkit.tracking import read_metrics

        marker = folder / ".done.json"
        if not marker.exists():
            return
        seconds = json.loads(marker.read_text(encoding="utf-8"))["seconds"]
        rows = [m for m in read_metrics(folder / "metrics.jsonl") if "time_step_s" in m]
        steps = [m["time_step_s"] for m in rows]
        evals = [m["time_eval_s"] for m in rows if "time_eval_s" in m]
        units = units or len(steps)
        # the machine's speed against its rates (sampling: per token step, not how short the answers were)
        ratio = (decoding_ratio(self.rates, rows) if stage == "sample"
                 else measured_ratio(self.rates, stage, seconds, steps, units, self.sections))
        self.rates = corrected(self.rates, stage, seconds, steps, units, self.sections, evals)
        if stage == "ppo":
            self.ppo_spent_s += seconds
        self.left[stage] -= 1
        self.done[label or stage] = seconds
        if (stage in REPROBE_AFTER and ratio and max(ratio, 1 / ratio) > LOAD_CHANGE
                and len(self.reprobes) + (self.reprobe_due is not None) < MAX_REPROBES and self.probe_args is not None):
            # the machine's load changed since the probe: the next plan measures it again (a run whose later
            # stages are all done already makes no plan, so it probes for nothing)
            self.reprobe_due = {"after": label or stage, "ratio": round(ratio, 3)}

    def measure_again(self) -> None:
        """The probe again, as :meth:`measured` asked: every rate from the machine as it is now."""
        due, self.reprobe_due = self.reprobe_due, None
        ratio = due["ratio"]
        how = "faster" if ratio < 1 else "slower"
        console.print(f"pipeline: budget: {due['after']} ran {max(ratio, 1 / ratio):.1f}× {how} than the probe's rates "
                      f"said: this machine's load has changed since the probe; measuring it again")
        self.measure()
        self.reprobes.append({**due, "probe_s": round(self.rates.probe_s, 1)})
        self.done[f"probe again (after {due['after']})"] = self.rates.probe_s
        self.save()

    def took_ppo_slot(self, folder: Path, label: str) -> None:
        """A stage that ran in PPO's slot (DPO) has finished: its seconds count as PPO's, PPO is not left to plan,
        and PPO's rates stay as they were (its steps are not PPO updates)."""
        marker = folder / ".done.json"
        if not marker.exists():
            return
        seconds = json.loads(marker.read_text(encoding="utf-8"))["seconds"]
        self.ppo_spent_s += seconds
        self.left["ppo"] -= 1
        self.done[label] = seconds

    def save(self) -> None:
        data = {"probe": self.saved_probe, "started": self.started, "plans": self.plans, "reprobes": self.reprobes}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.path)


def count_lines(path: str | Path) -> int:
    """Non-blank lines of a JSONL file (its records)."""
    return sum(1 for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
