"""The run report: one self-contained ``report.html`` with matplotlib plots embedded as base64 PNGs.

It reads a pipeline run folder ``runs/<name>/{sft,rm,ppo,dpo,eval}/`` (each part optional) and shows
- training curves from each stage's ``metrics.jsonl`` (SFT loss, reward-model accuracy, PPO score, KL,
  entropy, clip fraction, value loss, response length; or DPO's loss, implicit rewards and KL);
- reward against √KL (the frontier: how much reward each nat of KL bought);
- gold against proxy score by √KL (Gao et al. 2022): every PPO snapshot (``ppo/snapshots.json``: the policy on
  held-out prompts every few updates, x = its held-out KL), the one chosen by the held-out proxy marked, with a
  table of the snapshots and a sentence on whether gold followed proxy; without snapshots, the evaluated
  checkpoints. A proxy score that keeps rising while the gold score falls is reward hacking, and the report
  says so in words;
- the eval metrics table and answers before and after for the same prompts.
A part that is missing is named in the report instead of failing the build.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global state, no display needed

from rlhfkit.eval import metrics as M
from rlhfkit.tracking import read_metrics, read_snapshots

PPO_PANELS = [("score", "score (reward model / judge)"), ("kl", "KL to reference"), ("entropy", "entropy"),
              ("clipfrac", "clip fraction"), ("value_loss", "value loss"), ("response_len", "response length")]
DPO_PANELS = [("loss", "DPO loss"), ("reward_accuracy", "implicit reward accuracy"), ("reward_margin", "implicit reward margin"),
              ("reward_chosen", "implicit reward, chosen"), ("reward_rejected", "implicit reward, rejected"),
              ("implicit_kl", "implicit KL to reference")]


def png(fig: Figure, alt: str = "") -> str:
    """An <img> tag holding the figure as a base64 PNG; ``alt`` says in words what it draws."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="{html.escape(alt)}">'


def numeric(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that logged ``key`` as a finite number."""
    pts = [(r.get("step", i), r[key]) for i, r in enumerate(records)
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def smooth(y: np.ndarray) -> np.ndarray:
    """Trailing moving average over ~5% of the curve (PPO metrics are noisy step to step)."""
    w = max(1, len(y) // 20)
    if w == 1:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    head = c[1:w] / np.arange(1, w)
    return np.concatenate([head, (c[w:] - c[:-w]) / w])


def curve(ax, x: np.ndarray, y: np.ndarray, label: str, color: str = "C0") -> None:
    if len(y) and np.ptp(y) <= 1e-6 * max(1.0, abs(float(y.mean()))):
        # A flat curve: centre it, or matplotlib labels the ticks with float noise.
        pad = max(0.1 * abs(float(y.mean())), 0.05)
        ax.set_ylim(float(y.mean()) - pad, float(y.mean()) + pad)
    if len(x) > 20:
        ax.plot(x, y, color=color, alpha=0.25, lw=1)
        ax.plot(x, smooth(y), color=color, lw=2, label=f"{label} (smoothed)")
    else:
        ax.plot(x, y, color=color, lw=2, marker="o", ms=3, label=label)


def train_and_held_out(records: list[dict], key: str, what: str):
    """A figure of the training curve of ``key`` with the held-out ``eval_<key>`` points, or None (not logged)."""
    x, y = numeric(records, key)
    if not len(x):
        return None, None
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    curve(ax, x, y, f"train {what}")
    ex, ey = numeric(records, f"eval_{key}")
    if len(ex):
        ax.plot(ex, ey, "s-", color="C3", label=f"held-out {what}")
    return fig, ax


def plot_sft(records: list[dict]) -> str | None:
    fig, ax = train_and_held_out(records, "loss", "loss")
    if fig is None:
        return None
    ax.set(title="SFT: loss on response tokens", xlabel="step", ylabel="cross-entropy (nats/token)")
    ax.legend(), ax.grid(alpha=0.3)
    return png(fig)


def plot_rm(records: list[dict]) -> str | None:
    fig, ax = train_and_held_out(records, "accuracy", "accuracy")
    if fig is None:
        return None
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set(title="Reward model: preference accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    ax.legend(), ax.grid(alpha=0.3)
    return png(fig)


def plot_ppo(records: list[dict], title: str = "PPO training") -> str | None:
    return plot_panels(records, PPO_PANELS, title)


def plot_dpo(records: list[dict]) -> str | None:
    return plot_panels(records, DPO_PANELS, "DPO training")


def plot_panels(records: list[dict], panels: list[tuple[str, str]], title: str) -> str | None:
    """One panel per logged key of ``panels``, three a row, its held-out ``eval_<key>`` points beside the curve."""
    panels = [(k, name) for k, name in panels if len(numeric(records, k)[0])]
    if not panels:
        return None
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(12, 3.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (key, name) in zip(axes, panels):
        x, y = numeric(records, key)
        curve(ax, x, y, key, "C0")
        ex, ey = numeric(records, f"eval_{key}")
        if len(ex):
            ax.plot(ex, ey, "s-", color="C3", label=f"held-out {key}")
            ax.legend(fontsize=8)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return png(fig)


def eval_points(ev: dict | None) -> list[dict]:
    """Evaluated policies with a KL, RM and gold score (best-of-N kept apart: its KL is analytic)."""
    if not ev:
        return []
    return [m for m in ev.get("models", []) if m.get("kl") is not None]


def plot_frontier(ppo: list[dict], ev: dict | None) -> str | None:
    """Reward against √KL: PPO steps coloured by step, evaluated checkpoints as labelled points."""
    steps, kl = numeric(ppo, "kl")
    _, score = numeric(ppo, "score")
    have_ppo = len(kl) > 0 and len(kl) == len(score)
    pts = [m for m in eval_points(ev) if m.get("rm_score") is not None]
    if not have_ppo and not pts:
        return None
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    if have_ppo:
        sc = ax.scatter(np.sqrt(np.clip(kl, 0, None)), score, c=steps, cmap="viridis", s=14, label="PPO steps (training batch)")
        fig.colorbar(sc, ax=ax, label="step")
    for m in pts:
        marker = "*" if m.get("best_of") else "D"
        ax.scatter([math.sqrt(max(m["kl"], 0.0))], [m["rm_score"]], marker=marker, s=80, color="C3", edgecolor="k", zorder=3)
        ax.annotate(m["name"], (math.sqrt(max(m["kl"], 0.0)), m["rm_score"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.margins(x=0.12, y=0.1)
    ax.set(title="Reward against √KL (the frontier)", xlabel="√KL(π ‖ π_ref)  (√nats)", ylabel="reward-model score")
    ax.grid(alpha=0.3)
    if have_ppo:
        ax.legend(loc="lower right", fontsize=8)
    return png(fig)


SNAPSHOTS = "PPO snapshots, held-out prompts"


def has_scores(row: dict) -> bool:
    return all(isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) for k in ("kl", "rm_score", "gold_score"))


def snapshot_points(snaps: dict | None) -> list[dict]:
    """The snapshots the gold-vs-proxy figure draws (those with a held-out KL, proxy and gold score), by KL."""
    return sorted((s for s in (snaps or {}).get("snapshots", []) if has_scores(s)), key=lambda s: s["kl"])


def overoptimisation_points(ppo: list[dict], ev: dict | None,
                            snaps: dict | None = None) -> tuple[list[tuple[float, float, float]], str]:
    """(KL, proxy, gold) points sorted by KL, and where they come from.

    Prefer PPO's snapshots (every held-out evaluation, at its held-out KL); then evaluated checkpoints (same
    prompts, held-out) or the held-out evaluations in the training log (``eval/rm_score``, ``eval/gold_score`` at
    ``eval/kl``: PPO's, or DPO's with ``eval_prompts``), whichever has more points; last, PPO logs that carry a gold
    score of their rollouts.
    """
    drawn = snapshot_points(snaps)
    if len(drawn) >= 2:
        return [(s["kl"], s["rm_score"], s["gold_score"]) for s in drawn], SNAPSHOTS
    pts = [(m["kl"], m["rm_score"], m["gold_score"]) for m in eval_points(ev)
           if not m.get("best_of") and m.get("rm_score") is not None and m.get("gold_score") is not None]
    held = [(r["eval/kl"], r["eval/rm_score"], r["eval/gold_score"]) for r in ppo
            if all(isinstance(r.get(k), (int, float)) for k in ("eval/kl", "eval/rm_score", "eval/gold_score"))]
    if len(pts) >= 2 and len(pts) >= len(held):
        return sorted(pts), "evaluated checkpoints"
    if len(held) >= 2:
        return sorted(held), "the held-out evaluations in the training log"
    rows = [r for r in ppo if all(isinstance(r.get(k), (int, float)) for k in ("kl", "score", "gold_score"))]
    if len(rows) >= 2:
        kl = smooth(np.array([r["kl"] for r in rows], dtype=float))
        proxy = smooth(np.array([r["score"] for r in rows], dtype=float))
        gold = smooth(np.array([r["gold_score"] for r in rows], dtype=float))
        return sorted(zip(kl.tolist(), proxy.tolist(), gold.tolist())), "PPO training log (smoothed)"
    return [], ""


def detect_reward_hacking(points: list[tuple[float, float, float]], min_drop: float = 0.1) -> dict | None:
    """Proxy rising while gold falls, along increasing KL.

    points: (KL, proxy, gold) sorted by KL. Hacking when, after the gold peak, the gold score falls by at
    least ``min_drop`` of its range over the curve while the proxy score ends higher than at the peak.
    """
    if len(points) < 2:
        return None
    gold = [p[2] for p in points]
    peak = int(np.argmax(gold))
    last = len(points) - 1
    if peak == last:
        return None
    drop = gold[peak] - gold[last]
    rise = points[last][1] - points[peak][1]
    span = max(gold) - min(gold)
    if rise > 0 and drop > 0 and drop >= min_drop * span:
        return {"peak": peak, "peak_kl": points[peak][0], "last_kl": points[last][0], "gold_peak": gold[peak],
                "gold_last": gold[last], "proxy_peak": points[peak][1], "proxy_last": points[last][1]}
    return None


def plot_overoptimisation(points: list[tuple[float, float, float]], source: str, hack: dict | None,
                          labels: list[str] | None = None, chosen: int | None = None) -> str:
    """Proxy and gold against √KL, a point each; ``labels`` name the points (snapshot steps), ``chosen`` is the
    index of the point the proxy chose, marked on both curves."""
    x = np.sqrt(np.clip([p[0] for p in points], 0, None))
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    ax.plot(x, [p[1] for p in points], "o-", color="C0", label="proxy (reward model)")
    for xi, p, label in zip(x, points, labels or []):
        ax.annotate(label, (xi, p[1]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7, color="C0")
    ax.set(xlabel="√KL(π ‖ π_ref)  (√nats)", ylabel="proxy score", title=f"Gold vs proxy ({source})")
    ax.tick_params(axis="y", labelcolor="C0")
    ax2 = ax.twinx()  # the two scores live on different scales
    ax2.plot(x, [p[2] for p in points], "s-", color="C1", label="gold (judge)")
    ax2.set_ylabel("gold score")
    ax2.tick_params(axis="y", labelcolor="C1")
    if hack:
        ax.axvline(math.sqrt(max(hack["peak_kl"], 0.0)), color="C3", ls="--", lw=1)
        ax2.annotate("gold peak", (math.sqrt(max(hack["peak_kl"], 0.0)), hack["gold_peak"]), color="C3",
                     textcoords="offset points", xytext=(5, -12), fontsize=8)
    alt = f"gold and proxy against KL: {len(points)} points ({source})"
    if chosen is not None:
        name = labels[chosen] if labels else str(chosen)
        ax.scatter([x[chosen]], [points[chosen][1]], marker="*", s=220, color="C2", edgecolor="k", zorder=4,
                   label=f"chosen by proxy: step {name}")
        ax2.scatter([x[chosen]], [points[chosen][2]], marker="*", s=220, color="C2", edgecolor="k", zorder=4)
        alt += f"; chosen by proxy: step {name}"
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig, alt)


def fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec) if math.isfinite(x) else str(x)
    return html.escape(str(x))


def win_cell(w: dict | None) -> str:
    if not w:
        return "–"
    lo, hi = w["ci"]
    return (f"<b>{w['win_rate']:.2f}</b> <small>[{lo:.2f}, {hi:.2f}]</small><br><small>{w['wins']}W {w['ties']}T "
            f"{w['losses']}L</small><br><small>len {fmt(w.get('len_model'), '.0f')} vs {fmt(w.get('len_reference'), '.0f')}</small>")


def grading_cell(g: dict | None) -> str:
    if not g:
        return "–"
    lo, hi = g["ci"]
    return (f"<b>{g['accuracy']:.2f}</b> <small>[{lo:.2f}, {hi:.2f}]</small><br><small>macro-F1 "
            f"{fmt(g['macro_f1'], '.2f')}</small><br><small>{g['n']} replies, {g['no_label']} without a verdict</small>")


def transcription_cell(t: dict | None) -> str:
    if not t:
        return "–"
    return (f"<b>{t['wer']:.3f}</b> <small>[{t['wer_ci'][0]:.3f}, {t['wer_ci'][1]:.3f}]</small><br><small>CER "
            f"{t['cer']:.3f} [{t['cer_ci'][0]:.3f}, {t['cer_ci'][1]:.3f}]</small>")


def first_answers(samples: list[dict]) -> dict[str, dict[int, dict]]:
    """samples.jsonl's rows as model → prompt index → that model's first answer to the prompt."""
    by_model: dict[str, dict[int, dict]] = {}
    for s in samples:
        by_model.setdefault(s["model"], {}).setdefault(s["index"], s)
    return by_model


def word_diff(reference: str, hypothesis: str) -> str:
    """``hypothesis`` against ``reference`` word by word, as HTML: words missed struck through, words added marked."""
    ref, hyp = reference.split(), hypothesis.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(ref[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{html.escape(' '.join(ref[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{html.escape(' '.join(hyp[j1:j2]))}</ins>")
    return " ".join(out)


def speech_section(ev: dict, samples: list[dict], n: int = 8) -> str | None:
    """Transcription prompts: WER and CER of the recogniser's 1-best, the oracle N-best and every model, and the
    first ``n`` utterances as word-level diffs against what was said."""
    base = ev.get("recogniser")
    if not base:
        return None
    rows = [("recogniser 1-best", base["one_best"]), ("oracle N-best", base["oracle_nbest"])]
    rows += [(m["name"] + (" (reference)" if m.get("is_reference") else ""), m["transcription"])
             for m in ev.get("models", []) if m.get("transcription")]
    table = ("<table><tr><th>transcripts from</th><th>WER <small>[95 % interval]</small> · CER</th></tr>"
             + "".join(f"<tr><td>{html.escape(name)}</td><td class=win>{transcription_cell(t)}</td></tr>" for name, t in rows)
             + "</table>")
    by_model = first_answers([s for s in samples if s.get("reference")])
    models = [m["name"] for m in ev.get("models", []) if m.get("transcription")]
    body = []
    for i in sorted({i for answers in by_model.values() for i in answers})[:n]:
        said = next(answers[i] for answers in by_model.values() if i in answers)
        cells = [f"<td>{html.escape(said['reference'])}</td>", f"<td>{word_diff(said['reference'], said.get('one_best') or '')}</td>"]
        cells += [f"<td>{word_diff(said['reference'], by_model[m][i]['response']) if i in by_model.get(m, {}) else '–'}</td>"
                  for m in models]
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "<th>what was said</th><th>recogniser 1-best</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models)
    examples = f"<table class=diffs><tr>{head}</tr>{''.join(body)}</table>" if body else ""
    note = ("<p class=note>WER and CER: jiwer's edits over all the reference words (characters), both sides lower-cased "
            "and stripped of punctuation; the oracle N-best is the recogniser's hypothesis nearest what was said, the "
            "best a model that only picks could do. In the diffs, <del>struck</del> words were said and missed, "
            "<ins>marked</ins> words were not said.</p>")
    return table + note + examples


EVAL_COLUMNS = [("rm_score", "RM score"), ("gold_score", "gold score"), ("grading", "grading accuracy"),
                ("transcription", "WER · CER"), ("kl", "KL"),
                ("win_rate_rm", "win vs ref (RM)"), ("win_rate_gold", "win vs ref (gold)"), ("bleu", "BLEU"),
                ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("ppl", "perplexity"),
                ("response_len", "length (tokens)"), ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"),
                ("no_eos_frac", "no EOS")]


def eval_table(ev: dict) -> str:
    rows = ev.get("models", [])
    cols = [(k, t) for k, t in EVAL_COLUMNS if any(r.get(k) is not None for r in rows)]
    head = "".join(f"<th>{t}</th>" for _, t in cols)
    body = []
    for r in rows:
        name = html.escape(r["name"]) + (" <small>(reference)</small>" if r.get("is_reference") else "")
        cells = [f"<td class=win>{win_cell(r.get(k))}</td>" if k.startswith("win_rate")
                 else f"<td class=win>{grading_cell(r.get(k))}</td>" if k == "grading"
                 else f"<td class=win>{transcription_cell(r.get(k))}</td>" if k == "transcription"
                 else f"<td>{fmt(r.get(k), '.1f' if k in ('bleu', 'response_len', 'ppl') else '.3f')}</td>" for k, _ in cols]
        body.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
    per = ev.get("samples_per_prompt") or 1
    note = (f"<p class=note>{ev.get('n_prompts', '?')} prompts{f' × {per} answers each' if per > 1 else ''} from "
            f"<code>{html.escape(str(ev.get('prompts', '')))}</code>; "
            + ("answers decoded greedily (their KL is biased: a greedy answer is not a sample of the policy); "
               if ev.get("temperature") == 0 else f"answers sampled at temperature {fmt(ev.get('temperature'), 'g')}; ")
            + f"reference policy "
            f"<code>{html.escape(str(ev.get('reference', '')))}</code>; gold judge {fmt(ev.get('judge'))}. "
            "Win rates count ties as ½ (with several answers per prompt, a prompt counts the share of its answer pairs won); brackets are bootstrap 95% intervals over prompts; the lengths of both sides stand beside "
            "each win rate so that a win bought by length shows. KL is the sampled estimate Σ log π − log π_ref per "
            "answer (best-of-N: analytic)."
            + (" Grading accuracy: the share of replies to grading prompts whose opening verdict is the gold one "
               "(a reply without a verdict counts as wrong), with its interval and the macro-F1 over the verdicts."
               if any(r.get("grading") for r in rows) else "") + "</p>")
    skipped = ev.get("skipped") or {}
    if skipped:
        note += "<p class=note>Not measured: " + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in skipped.items()) + ".</p>"
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>{note}"


def human_table(h: dict) -> str:
    """The people's blind A/B verdict (eval/human.json) beside the gold judge's and the reward model's, on the same
    pairs, with how often each judge agrees with people."""
    def row(who: str, w: dict, agree: str) -> str:
        cell = win_cell(w) if h["answers"] else "no answers yet"
        return f"<tr><td>{who}</td><td class=win>{cell}</td><td>{agree}</td></tr>"

    body = [row(f"people <small>({h['answers']} answers, {len(h['annotators'])} annotator(s))</small>", h["people"],
                "–" if h.get("annotator_agreement") is None else f"between annotators {h['annotator_agreement']:.2f}")]
    for j in h.get("judges", {}).values():
        agree = "–" if j["agreement"] is None else f"<b>{j['agreement']:.2f}</b> <small>on {j['pairs']} pairs both decided</small>"
        body.append(row(html.escape(j["name"]), j, agree))
    c = h.get("choices", {})
    note = (f"<p class=note>Project <code>{html.escape(h['project'])}</code>: {h['tasks']} pairs of "
            f"{html.escape(h['model'])} and {html.escape(h['reference'])} answers shown blind, in an order drawn for "
            f"each annotator; {h['answered_pairs']} answered; {h['identical']} pairs with identical answers were not "
            f"asked and count as ties. Answers: A better or B better {c.get('a_better', 0) + c.get('b_better', 0)}, tie "
            f"{c.get('tie', 0)}, both bad {c.get('both_bad', 0)} (a tie or both bad counts ½). Agreement: over the pairs "
            "where people chose a side and the judge's scores differ, the share where the judge prefers the same "
            "answer.</p>")
    return (f"<table><tr><th>judged by</th><th>win rate of {html.escape(h['model'])} over {html.escape(h['reference'])}"
            f"</th><th>agreement with people</th></tr>{''.join(body)}</table>{note}")


def samples_table(samples: list[dict], ev: dict | None, n: int = 8) -> str | None:
    """Answers before (the reference) and after (the last evaluated policy, and best-of-N) for the same prompts."""
    by_model = first_answers(samples)
    names = list(by_model)
    if not names:
        return None
    rows = ev.get("models", []) if ev else []
    before = next((r["name"] for r in rows if r.get("is_reference")), names[0])
    policies = [r["name"] for r in rows if not r.get("is_reference") and not r.get("best_of")] or [x for x in names if x != before]
    cols = [before] + policies + [r["name"] for r in rows if r.get("best_of")]  # every tuned policy (several algorithms)
    cols = [c for c in dict.fromkeys(cols) if c in by_model]
    tags = {before: " (before)", **({cols[1]: " (after)"} if len(cols) > 1 and policies == [cols[1]] else {})}
    head = "<th>prompt</th>" + "".join(f"<th>{html.escape(c)}{tags.get(c, '')}</th>" for c in cols)
    body = []
    for i in sorted(by_model[before])[:n]:
        cells = [f"<td class=prompt>{html.escape(by_model[before][i]['prompt'])}</td>"]
        for c in cols:
            s = by_model[c].get(i)
            if s is None:
                cells.append("<td>–</td>")
                continue
            scores = " · ".join(f"{k.replace('_score', '')} {fmt(s.get(k))}" for k in ("gold_score", "rm_score") if s.get(k) is not None)
            cut = "" if s.get("ended", True) else " · <b>no EOS</b>"
            cells.append(f"<td><div class=answer>{html.escape(s['response']) or '<i>(empty)</i>'}</div>"
                         f"<small>{scores}{cut}</small></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class=samples><tr>{head}</tr>{''.join(body)}</table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
img{max-width:100%;display:block;margin:.6em 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
table{border-collapse:collapse;width:100%;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#f4f4f6} td small{color:#666}
td.win{white-space:nowrap} .samples td{width:30%} .samples td.prompt{width:16%;background:#fafafa}
.diffs td{width:auto}
.answer{white-space:pre-wrap;margin-bottom:.3em}
.note{color:#555;font-size:.9em}
.warning{background:#fff1f0;border-left:4px solid #d4380d;padding:.6em .8em}
.ok{background:#f0f8f0;border-left:4px solid #389e0d;padding:.6em .8em}
.missing{color:#888;font-style:italic}
del{background:#ffe3e3;color:#a61d24} ins{background:#e3f6e3;text-decoration:none;color:#1d6a2a}
.summary{background:#f6f8fa;border:1px solid #e1e4e8;padding:.7em 1em .7em 2em;font-size:.95em}
"""


def summary_lines(ev: dict) -> list[str]:
    """Up to six plain-text lines: gold, RM score and grading accuracy before → after, win rates with intervals,
    KL, best-of-N."""
    rows = ev.get("models", [])
    ref = next((r for r in rows if r.get("is_reference")), rows[0] if rows else None)
    after = [r for r in rows if r is not ref and not r.get("best_of")]
    if ref is None or not after:
        return []
    if len(after) > 1:
        return several_summary_lines(ev, ref, after)
    new = after[-1]
    lines = []
    for key, what in (("gold_score", f"gold score ({ev.get('judge')})"), ("rm_score", "reward-model score")):
        if new.get(key) is not None:
            lines.append(f"{what}: {ref[key]:.3f} ({ref['name']}) → {new[key]:.3f} ({new['name']})")
    if ref.get("grading") and new.get("grading"):
        a, b = ref["grading"], new["grading"]
        lines.append(f"grading accuracy: {a['accuracy']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}] ({ref['name']}) → "
                     f"{b['accuracy']:.2f} [{b['ci'][0]:.2f}, {b['ci'][1]:.2f}] ({new['name']}), macro-F1 "
                     f"{fmt(a['macro_f1'], '.2f')} → {fmt(b['macro_f1'], '.2f')}, on {b['n_prompts']} grading prompts")
    lines += wer_lines(ev, ref, [new])
    for key, what in (("win_rate_gold", "gold judge"), ("win_rate_rm", "reward model")):
        w = new.get(key)
        if w:
            lines.append(f"win rate of {new['name']} over {ref['name']} by {what}: {w['win_rate']:.2f} "
                         f"[{w['ci'][0]:.2f}, {w['ci'][1]:.2f}], length {fmt(w['len_model'], '.0f')} vs "
                         f"{fmt(w['len_reference'], '.0f')} tokens")
    if new.get("kl") is not None:
        lines.append(f"KL({new['name']} ‖ {ref['name']}): {new['kl']:.3f} nats per answer")
    return (lines + best_of_lines(rows))[:6]


def wer_lines(ev: dict, ref: dict, after: list[dict]) -> list[str]:
    """Transcription prompts: the word error rate from the recogniser's 1-best to each model, with intervals."""
    base = ev.get("recogniser")
    if not base or not ref.get("transcription"):
        return []
    def one(t: dict) -> str:
        return f"{t['wer']:.3f} [{t['wer_ci'][0]:.3f}, {t['wer_ci'][1]:.3f}]"
    models = [ref] + [m for m in after if m.get("transcription")]
    return [f"word error rate: {one(base['one_best'])} (recogniser 1-best; oracle N-best {base['oracle_nbest']['wer']:.3f}) → "
            + " → ".join(f"{one(m['transcription'])} ({m['name']})" for m in models)]


def best_of_lines(rows: list[dict]) -> list[str]:
    """The best-of-N baselines' summary lines."""
    return [f"{r['name']} baseline: gold score {r['gold_score']:.3f}, KL {r['kl']:.3f}" for r in rows
            if r.get("best_of") and r.get("gold_score") is not None]


def several_summary_lines(ev: dict, ref: dict, after: list[dict]) -> list[str]:
    """The summary when several algorithms ran from the same SFT model: each figure for every tuned policy, side by side."""
    def each(key: str, spec: str) -> str:
        return ", ".join(f"{fmt(m.get(key), spec)} ({m['name']})" for m in after)

    lines = [f"gold score ({ev.get('judge')}): {fmt(ref.get('gold_score'))} ({ref['name']}) → {each('gold_score', '.3f')}"]
    if ref.get("rm_score") is not None:
        lines.append(f"reward-model score: {fmt(ref.get('rm_score'))} ({ref['name']}) → {each('rm_score', '.3f')}")
    if ref.get("grading") and all(m.get("grading") for m in after):
        g = ref["grading"]
        lines.append(f"grading accuracy: {g['accuracy']:.2f} ({ref['name']}) → "
                     + ", ".join(f"{m['grading']['accuracy']:.2f} [{m['grading']['ci'][0]:.2f}, {m['grading']['ci'][1]:.2f}] "
                                 f"({m['name']})" for m in after) + f", on {g['n_prompts']} grading prompts")
    lines += wer_lines(ev, ref, after)
    wins = [(m["name"], m["win_rate_gold"]) for m in after if m.get("win_rate_gold")]
    if wins:
        lines.append(f"win rate over {ref['name']} by the gold judge: "
                     + ", ".join(f"{name} {w['win_rate']:.2f} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}]" for name, w in wins))
    if any(m.get("kl") is not None for m in after):
        lines.append(f"KL(· ‖ {ref['name']}), nats per answer: {each('kl', '.3f')}")
    return (lines + best_of_lines(ev.get("models", [])))[:6]


def reward_hacking_verdict(hack: dict | None, points: list[tuple[float, float, float]] | None = None) -> str:
    if hack is None:
        text = "No over-optimisation seen: the gold score does not fall while the proxy score rises along the KL axis."
        if points and len(points) >= 2:
            (_, p0, g0), (_, p1, g1) = points[0], points[-1]
            if p1 <= p0 and g1 <= g0:
                text = (f"No over-optimisation seen, and no gain either: from the lowest to the highest KL the proxy "
                        f"score went {p0:.3f} → {p1:.3f} and the gold score {g0:.3f} → {g1:.3f}. The policy has not "
                        "learned what the reward model prefers yet (more PPO updates, bigger batches or a larger "
                        "learning rate).")
            elif g1 > g0:
                text = (f"No over-optimisation seen: the gold score rises with the KL ({g0:.3f} → {g1:.3f}; proxy "
                        f"{p0:.3f} → {p1:.3f}).")
        return f"<p class=ok>{html.escape(text)}</p>"
    return (f'<p class=warning id="reward-hacking"><b>Reward hacking.</b> Past √KL ≈ '
            f'{math.sqrt(max(hack["peak_kl"], 0)):.2f} the proxy (reward-model) score still rises '
            f'({hack["proxy_peak"]:.3f} → {hack["proxy_last"]:.3f}) while the gold score falls '
            f'({hack["gold_peak"]:.3f} → {hack["gold_last"]:.3f}): the policy exploits the reward model. '
            "Keep the checkpoint at the gold peak, or raise the KL coefficient (β / target KL), stop earlier, "
            "or train the reward model on more feedback from the current policy.</p>")


def diff_se(a: dict, b: dict) -> float | None:
    """Standard error of the gold difference of two snapshots, as if their answers were independent (a paired
    difference on the same prompts is at most this noisy, so the test below errs on the side of "noise")."""
    if a.get("gold_se") is None or b.get("gold_se") is None:
        return None
    return math.sqrt(a["gold_se"] ** 2 + b["gold_se"] ** 2)


def within_noise(a: dict, b: dict) -> bool:
    """Whether the gold scores of two snapshots differ by less than two standard errors (False when unknown)."""
    se = diff_se(a, b)
    return se is not None and abs(b["gold_score"] - a["gold_score"]) < 2 * se


def snapshots_verdict(snaps: dict) -> str:
    """In words, whether the gold score followed the proxy across PPO's snapshots (in step order): their rank
    correlation, the gold score at the snapshot the proxy chose against the start's, and — when the proxy kept
    rising after the gold peak while gold fell — the step where over-optimisation began."""
    rows = sorted((s for s in snaps["snapshots"] if has_scores(s)), key=lambda s: s["step"])
    start = rows[0]
    pick = next((s for s in rows if s["step"] == snaps["chosen"]), start)
    rho = M.rank_correlation([s["rm_score"] for s in rows], [s["gold_score"] for s in rows])
    corr = (f"rank correlation of proxy and gold over the {len(rows)} snapshots {rho:+.2f}" if rho is not None
            else f"no rank correlation over the {len(rows)} snapshots: one of the scores never changed")
    gain = pick["gold_score"] - start["gold_score"]
    at = f"step {pick['step']} (KL {pick['kl']:.2f})"
    hack = detect_reward_hacking([(s["kl"], s["rm_score"], s["gold_score"]) for s in rows])
    if hack is not None and within_noise(rows[hack["peak"]], rows[-1]):
        peak, last = rows[hack["peak"]], rows[-1]
        return (f"<p class=ok><b>Gold moved within its noise:</b> from step {peak['step']} to step {last['step']} the "
                f"proxy went {hack['proxy_peak']:.3f} → {hack['proxy_last']:.3f} and the gold score "
                f"{hack['gold_peak']:.3f} → {hack['gold_last']:.3f}, less than two standard errors of the difference "
                f"(±{2 * diff_se(peak, last):.3f}); {corr}. Not evidence of over-optimisation, nor of a gain.</p>")
    if hack is not None:
        peak, last = rows[hack["peak"]], rows[-1]
        return (f'<p class=warning id="reward-hacking"><b>Proxy rose while gold fell after step {peak["step"]}: '
                f'over-optimisation.</b> From step {peak["step"]} to step {last["step"]} the proxy went '
                f'{hack["proxy_peak"]:.3f} → {hack["proxy_last"]:.3f} and the gold score {hack["gold_peak"]:.3f} → '
                f'{hack["gold_last"]:.3f} ({corr}). The snapshot the proxy chose, {at}, is {gain:+.3f} in gold against '
                "the start. Take an earlier snapshot, raise the KL coefficient, or train the reward model on feedback "
                "from the current policy.</p>")
    if pick is start:
        return (f"<p class=ok>No update beat the start on the held-out proxy, so the chosen snapshot is the start "
                f"(step {start['step']}); {corr}.</p>")
    if within_noise(start, pick):
        return (f"<p class=ok><b>Gold did not move beyond its noise:</b> {gain:+.3f} at the chosen {at} against the "
                f"start, within two standard errors of the difference (±{2 * diff_se(start, pick):.3f}); {corr}.</p>")
    if gain > 0:
        return f"<p class=ok><b>Gold rose with proxy:</b> {gain:+.3f} at the chosen {at} against the start; {corr}.</p>"
    return (f"<p class=warning><b>Gold did not follow proxy:</b> the proxy chose {at}, "
            f"{pick['rm_score'] - start['rm_score']:+.3f} in proxy against the start, but the gold score there is "
            f"{gain:+.3f}; {corr}. The reward model rewards something the gold judge does not.</p>")


def snapshots_table(snaps: dict) -> str:
    """One row per snapshot: step, held-out KL, proxy, gold, grading accuracy, where its weights are, the chosen mark."""
    body = []
    for s in snaps["snapshots"]:
        weights = ("the start (the reference)" if s["step"] == 0 else f"<code>{html.escape(s['path'])}</code>" if s.get("path")
                   else "not kept (keep_snapshots off)")
        mine = s["step"] == snaps["chosen"]
        body.append(f"<tr class={'chosen' if mine else 'snapshot'}><td>{s['step']}</td><td>{fmt(s.get('kl'))}</td>"
                    f"<td>{fmt(s.get('rm_score'))}</td><td>{fmt(s.get('gold_score'))}</td>"
                    f"<td>{fmt(s.get('grading_accuracy'), '.2f')}</td><td>{weights}</td>"
                    f"<td>{'<b>★ chosen</b>' if mine else ''}</td></tr>")
    return ("<table><tr><th>step</th><th>KL (held-out)</th><th>proxy (RM score)</th><th>gold score</th>"
            f"<th>grading accuracy</th><th>weights</th><th></th></tr>{''.join(body)}</table>"
            "<p class=note>Each row is PPO's policy at that step on the held-out dev prompts: one answer per prompt, "
            "sampled with the same seed at every step; KL is eval's estimate Σ log π − log π_ref per answer. The chosen "
            "snapshot has the highest held-out proxy (reward-model) score: the gold judge stands for people and checks "
            "that choice, it never makes it.</p>")


def gold_vs_proxy(ppo: list[dict], ev: dict | None, snaps: dict | None) -> tuple[str | None, str]:
    """(the gold-vs-proxy figure or None, the sentence under it): every snapshot when there are snapshots with gold
    scores, the chosen one marked; else the evaluated checkpoints or PPO's log."""
    points, source = overoptimisation_points(ppo, ev, snaps)
    if not points:
        return None, ""
    if source != SNAPSHOTS:
        hack = detect_reward_hacking(points)
        return plot_overoptimisation(points, source, hack), reward_hacking_verdict(hack, points)
    drawn = snapshot_points(snaps)
    steps = [s["step"] for s in drawn]
    in_order = sorted(drawn, key=lambda s: s["step"])
    hack = detect_reward_hacking([(s["kl"], s["rm_score"], s["gold_score"]) for s in in_order])
    chosen = steps.index(snaps["chosen"]) if snaps["chosen"] in steps else None
    return plot_overoptimisation(points, source, hack, [str(s) for s in steps], chosen), snapshots_verdict(snaps)


def ppo_algo(ppo_dir: Path) -> str:
    """The PPO trainer's advantage estimator as a heading ("PPO", "GRPO", …), from its saved config."""
    path = ppo_dir / "config.yaml"
    algo = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("algo", "ppo") if path.exists() else "ppo"
    return {"reinforce++": "REINFORCE++"}.get(algo, str(algo).upper())


# The folders a run's policy optimisations write: ppo/ for the online one (or dpo/), or, when several algorithms
# ran side by side, one per algorithm (the pipeline's stage_folder).
POLICY_FOLDERS = ("ppo", "grpo", "rloo", "reinforcepp", "dpo")


def policy_runs(run: Path) -> list[tuple[str, str, list[dict]]]:
    """(folder, heading, training log) of every policy optimisation the run folder holds, in the pipeline's order."""
    found = []
    for part in POLICY_FOLDERS:
        folder = run / part
        if (folder / "metrics.jsonl").exists() or (folder / "config.yaml").exists():
            found.append((part, "DPO" if part == "dpo" else ppo_algo(folder), read_metrics(folder / "metrics.jsonl")))
    return found


def build_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out_path``) from whatever stages the run folder holds; returns its path."""
    run = Path(run_dir)
    out = Path(out_path) if out_path else run / "report.html"
    name = html.escape(run.resolve().name)
    sft, rm = (read_metrics(run / part / "metrics.jsonl") for part in ("sft", "rm"))
    ev_path = run / "eval" / "eval.json"
    ev = json.loads(ev_path.read_text(encoding="utf-8")) if ev_path.exists() else None
    samples = read_metrics(run / "eval" / "samples.jsonl")  # a plain JSONL reader; no file → []
    missing: list[str] = []

    def shown(body: str | None, what: str, why: str) -> str:
        if body is None:
            missing.append(f"{what}: {why}")
            return f"<p class=missing>{html.escape(what)} not shown: {html.escape(why)}.</p>"
        return body

    parts = [f"<h1>rlhfkit report: {name}</h1>"]
    human_path = run / "eval" / "human.json"
    human = json.loads(human_path.read_text(encoding="utf-8")) if human_path.exists() else None
    lines = summary_lines(ev) if ev else []
    if human:
        from rlhfkit.feedback.arena import human_summary

        lines.append(human_summary(human))
    if lines:
        parts.append("<ul class=summary>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
    parts.append("<h2>Evaluation</h2>" + shown(eval_table(ev) if ev else None, "evaluation table", "no eval/eval.json"))
    if human:
        parts.append("<h2>People's verdict: blind A/B</h2>" + human_table(human))
    parts.append("<h2>Supervised fine-tuning and reward model</h2><div class=grid>"
                 + shown(plot_sft(sft), "SFT curve", "no loss in sft/metrics.jsonl")
                 + shown(plot_rm(rm), "reward-model curve", "no accuracy in rm/metrics.jsonl") + "</div>")
    gold_check = run / "rm" / "gold_check.json"
    if gold_check.exists():
        g = json.loads(gold_check.read_text(encoding="utf-8"))
        acc = ("no pairs whose gold scores differ" if g["gold_accuracy"] is None else
               f"pair accuracy <b>{g['gold_accuracy']:.2f}</b> ({g['gold_pairs']} pairs whose gold scores differ; 0.5 is chance)")
        parts.append(f"<p>Reward model against the gold judge <b>{html.escape(str(g['judge']))}</b> on its "
                     f"{g['held_out_prompts']} held-out prompts: {acc}.</p>")
    trained = policy_runs(run) or [("ppo", ppo_algo(run / "ppo"), [])]  # none yet: say the PPO curves are missing
    several = len(trained) > 1
    for part, algo, records in trained:
        plot = plot_dpo(records) if part == "dpo" else plot_ppo(records, f"{algo} training")
        why = "no loss in dpo/metrics.jsonl" if part == "dpo" else f"no {part}/metrics.jsonl"
        parts.append(f"<h2>{algo} training</h2>" + shown(plot, f"{algo} curves", why))
    for part, algo, records in trained:
        snaps = read_snapshots(run / part) if part != "dpo" else None
        # DPO's log: its held-out answers, with eval_prompts; online: PPO's snapshots
        figure, verdict = gold_vs_proxy(records, ev, snaps)
        frontier = plot_frontier([] if part == "dpo" else records, ev)
        tag = f" ({algo})" if several else ""  # which algorithm's, when several ran
        parts.append(f"<h2>KL: the frontier and over-optimisation{tag}</h2><div class=grid>"
                     + shown(frontier, f"reward against √KL{tag}",
                             "needs PPO metrics with score and kl, or evaluated checkpoints with RM scores")
                     + shown(figure, f"gold vs proxy{tag}",
                             "needs two or more PPO snapshots or evaluated checkpoints with RM and "
                             "gold scores (or gold_score in the PPO log)")
                     + "</div>" + verdict)
        if snaps:
            parts.append(f"<h3>{algo} snapshots</h3>" + snapshots_table(snaps))
    speech = speech_section(ev, samples) if ev else None
    if speech:
        parts.append("<h2>Speech recognition: word error rate</h2>" + speech)
    parts.append("<h2>Answers before and after</h2>" + shown(samples_table(samples, ev), "sample answers", "no eval/samples.jsonl"))
    if missing:
        parts.append("<h2>Missing parts</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul>")
    doc = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>rlhfkit report: {name}</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out
