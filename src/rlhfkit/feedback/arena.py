"""Human evaluation of two checkpoints (the arena): people judge the model's answers against the reference's, blind.

Making it (:func:`make_arena`): an evaluation's ``samples.jsonl`` holds one answer per prompt and sample for each
model, sampled with the same seed. Each (prompt, sample) gives one ``arena`` task over the model's answer and the
reference's, in a random order per task (so not even the API's response ids say which is which; the side is kept
in the responses' stored meta, never sent). The app shows the two answers with no model names, in an order drawn
again for each annotator (the order is recorded), and takes one of: A better, B better, tie, both bad. Pairs whose
two answers are the same text are not asked; they count as ties, as the gold judge scores them. A project made
for other answers (an earlier run's) is refused, not reused.

Reading it (:func:`arena_results`, written to ``eval/human.json``): per pair, the model's outcome is 1 when people
chose its answer, 0 when they chose the reference's, ½ for a tie or "both bad"; several annotators of one pair
average. The people's win rate is the mean over the answered pairs, with a bootstrap interval over prompts (as
``rlhf eval``'s win rates). Beside it: the gold judge's and the reward model's win rates on the same pairs, and
their agreement with people: over the pairs where people chose a side and the judge did not score a tie, the
share where the judge prefers the same answer. Annotators agree with each other as the stats measure it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Optional

from sqlalchemy import select

from rlhfkit.data.formats import read_records
from rlhfkit.eval import metrics as M
from rlhfkit.feedback import agreement as agr
from rlhfkit.feedback.annotate import refresh_open
from rlhfkit.feedback.checks import check_name
from rlhfkit.feedback.db import Database, Project, Prompt, Response, Task, get_project
from rlhfkit.feedback.export import load_answers

GUIDELINES = """Two answers to the same prompt, from two versions of a model, in an order drawn for you.
Which would you rather a user got?

- **A better** (`a`) or **B better** (`b`): one answer is clearly the one to give.
- **Tie** (`t`): both are about equally good.
- **Both bad** (`x`): neither is acceptable.

You are not told which model wrote which answer."""


@dataclass
class Pair:
    """One prompt's answer from the model and from the reference, with the same sampling seed."""

    index: int  # the prompt's position in the evaluation
    sample: int  # which of its answers
    prompt: str
    model: dict  # the model's samples.jsonl row
    reference: dict  # the reference's row

    @property
    def identical(self) -> bool:
        return self.model["response"].strip() == self.reference["response"].strip()


def arena_models(ev: dict) -> tuple[str, str]:
    """(model, reference) labels an evaluation compares by default: the last evaluated policy (not a best-of-N
    baseline) and the reference."""
    rows = ev.get("models", [])
    ref = next((r["name"] for r in rows if r.get("is_reference")), None)
    after = [r["name"] for r in rows if not r.get("is_reference") and not r.get("best_of")]
    if ref is None or not after:
        raise ValueError("the evaluation has no reference and policy to compare (eval.json: models)")
    return after[-1], ref


def arena_project_name(eval_dir: str | Path) -> str:
    """A project name from an evaluation folder's path: ``runs/demo/eval`` → ``arena-runs-demo-eval``."""
    parts = [x for x in Path(eval_dir).parts if x not in ("/", ".", "..")]
    return "arena-" + "-".join(parts[-3:])


def read_pairs(eval_dir: str | Path, model: str, reference: str) -> list[Pair]:
    """The (model, reference) answer pairs of an evaluation folder's samples.jsonl, in prompt order."""
    path = Path(eval_dir) / "samples.jsonl"
    rows: dict[str, dict[tuple[int, int], dict]] = {}
    for r in read_records(path, "auto"):
        rows.setdefault(r["model"], {})[(r["index"], r.get("sample", 0))] = r
    for label in (model, reference):
        if label not in rows:
            raise ValueError(f"{path}: no answers of model {label!r} (it has {', '.join(sorted(rows)) or 'none'})")
    keys = sorted(set(rows[model]) & set(rows[reference]))
    return [Pair(i, j, rows[reference][(i, j)]["prompt"], rows[model][(i, j)], rows[reference][(i, j)]) for i, j in keys]


def make_arena(db: Database, project: str, eval_dir: str | Path, model: Optional[str] = None,
               reference: Optional[str] = None, annotators_per_task: int = 1, seed: int = 0) -> dict:
    """Create the arena project of an evaluation (once: a project that exists is left as it is); writes
    ``eval_dir/arena.json`` (project, models, counts) and returns it."""
    eval_dir = Path(eval_dir)
    project = check_name(project, "--project")
    if model is None or reference is None:
        m, r = arena_models(json.loads((eval_dir / "eval.json").read_text(encoding="utf-8")))
        model, reference = model or m, reference or r
    if model == reference:
        raise ValueError(f"--model: the same as the reference ({model!r}); an arena compares two models")
    if annotators_per_task < 1:
        raise ValueError("--annotators-per-task: must be at least 1")
    pairs = read_pairs(eval_dir, model, reference)
    asked = [p for p in pairs if not p.identical]
    info = {"project": project, "model": model, "reference": reference, "pairs": len(pairs), "tasks": len(asked),
            "identical": len(pairs) - len(asked), "annotators_per_task": annotators_per_task}
    rng, sides_rng = random.Random(seed), random.Random(f"arena-sides-{seed}")  # task order; each task's two sides
    with db.tx() as s:
        existing = get_project(s, project)
        if existing is not None:
            held = stored_pairs(s, existing)
            if held != {(p.index, p.sample): (p.model["response"], p.reference["response"]) for p in asked}:
                raise ValueError(f"--project: {project!r} holds other answers than {eval_dir / 'samples.jsonl'} (an "
                                 "earlier evaluation's?); give the arena a new project name")
        else:
            proj = Project(name=project, guidelines=GUIDELINES, annotators_per_task=annotators_per_task, max_held=5,
                           open_tasks=0)
            s.add(proj)
            s.flush()
            prompts: dict[int, Prompt] = {}
            for p in asked:
                if p.index not in prompts:
                    prompts[p.index] = Prompt(project_id=proj.id, record={"prompt": p.prompt}, text=p.prompt)
                    s.add(prompts[p.index])
                    s.flush()
                sides = [Response(prompt_id=prompts[p.index].id, text=row["response"], model=label,
                                  meta={"arena": {"index": p.index, "sample": p.sample, "side": side}})
                         for side, label, row in (("model", model, p.model), ("reference", reference, p.reference))]
                sides_rng.shuffle(sides)  # the task's own order is random too: its positions say nothing of the models
                s.add_all(sides)
                s.flush()
                s.add(Task(project_id=proj.id, prompt_id=prompts[p.index].id, kind="arena",
                           response_ids=[sides[0].id, sides[1].id], is_gold=False, gold=None, order_key=rng.random(),
                           n_active=0, is_open=True))
            s.flush()
            refresh_open(s, proj)
    (eval_dir / "arena.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def stored_pairs(s, proj: Project) -> dict[tuple[int, int], tuple[str, str]]:
    """(index, sample) → (the model's answer, the reference's) of an arena project's tasks."""
    rows = s.execute(select(Response.text, Response.meta).join(Prompt, Prompt.id == Response.prompt_id)
                     .where(Prompt.project_id == proj.id)).all()
    sides: dict[tuple[int, int], dict[str, str]] = {}
    for text, meta in rows:
        where = (meta or {}).get("arena")
        if where:
            sides.setdefault((where["index"], where["sample"]), {})[where["side"]] = text
    return {k: (v.get("model", ""), v.get("reference", "")) for k, v in sides.items()}


def side(diff: float, tie_tol: float = 0.0) -> int:
    """+1 the model's answer is preferred, −1 the reference's, 0 neither (a score difference within ``tie_tol``)."""
    return 0 if abs(diff) <= tie_tol else (1 if diff > 0 else -1)


def agreement_with(people: list[float], scores: list[Optional[tuple[float, float]]], tie_tol: float) -> dict:
    """How often a judge's scores (model, reference) prefer the answer people preferred, over the pairs where
    people chose a side (outcome ≠ ½) and the judge's scores differ by more than ``tie_tol``."""
    both = [(side(o - 0.5), side(a - b, tie_tol)) for o, sc in zip(people, scores) if sc is not None
            for a, b in [sc] if o != 0.5]
    decided = [(h, j) for h, j in both if j != 0]
    agree = sum(h == j for h, j in decided)
    return {"agreement": agree / len(decided) if decided else None, "pairs": len(decided), "judge_ties": len(both) - len(decided)}


def arena_results(db: Database, eval_dir: str | Path, tie_tol: float = 0.0, n_boot: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> dict:
    """The people's verdict on an evaluation's arena (``eval_dir/arena.json``); written to ``eval_dir/human.json``."""
    eval_dir = Path(eval_dir)
    info = json.loads((eval_dir / "arena.json").read_text(encoding="utf-8"))
    pairs = read_pairs(eval_dir, info["model"], info["reference"])
    tasks, answers, _, _, _ = load_answers(db, info["project"])
    with db.tx() as s:
        metas = dict(s.execute(select(Response.id, Response.meta).join(Prompt, Prompt.id == Response.prompt_id)
                               .join(Project, Project.id == Prompt.project_id)
                               .where(Project.name == info["project"])).all())
    by_pair, model_at = {}, {}
    for t in tasks:
        if t.kind == "arena":
            where = [metas[r]["arena"] for r in t.response_ids]
            key = (where[0]["index"], where[0]["sample"])
            by_pair[key] = answers.get(t.id, [])
            model_at[key] = next(i for i, w in enumerate(where) if w["side"] == "model")  # its task position
    outcome = {"a_better": 0, "b_better": 0, "tie": 0, "both_bad": 0}
    rows = []  # (pair, people's outcome for the model)
    annotators, agree_units = set(), []
    for p in pairs:
        if p.identical:
            rows.append((p, 0.5))
            continue
        dones = by_pair.get((p.index, p.sample), [])
        if not dones:
            continue  # not answered yet
        votes = []
        for d in dones:
            annotators.add(d.annotator)
            better = d.payload["better"]
            votes.append(0.5 if better is None else float(better == model_at[(p.index, p.sample)]))
            outcome[{"a": "a_better", "b": "b_better"}.get(d.payload["choice"], d.payload["choice"])] += 1
        agree_units += [v for a, b in combinations(dones, 2) for v in agr.answer_agreement("arena", a.payload, b.payload)]
        rows.append((p, sum(votes) / len(votes)))
    prompts: dict[int, list[float]] = {}
    for p, o in rows:
        prompts.setdefault(p.index, []).append(o)
    people = M.grouped_rate(list(prompts.values()), n_boot, confidence, seed)
    result = {**info, "answered_pairs": len(rows) - info["identical"], "annotators": sorted(annotators),
              "answers": sum(outcome.values()), "choices": outcome,
              "annotator_agreement": sum(agree_units) / len(agree_units) if agree_units else None,
              "people": people, "judges": {}}
    outcomes = [o for _, o in rows]
    for key, name in (("gold_score", "gold judge"), ("rm_score", "reward model")):
        scores = [(p.model[key], p.reference[key]) if p.model.get(key) is not None and p.reference.get(key) is not None
                  else None for p, _ in rows]
        if rows and all(sc is not None for sc in scores):
            per_prompt: dict[int, list[float]] = {}
            for (p, _), (a, b) in zip(rows, scores):
                per_prompt.setdefault(p.index, []).append(0.5 if side(a - b, tie_tol) == 0 else float(a > b))
            result["judges"][key] = {"name": name, **M.grouped_rate(list(per_prompt.values()), n_boot, confidence, seed),
                                     **agreement_with(outcomes, scores, tie_tol)}
    (eval_dir / "human.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def human_summary(h: dict) -> str:
    """One line: the people's win rate with its interval, how many answered, and their agreement with the gold judge."""
    w = h["people"]
    if not h["answers"]:
        return f"win rate of {h['model']} over {h['reference']} by people: no answers yet (project {h['project']})"
    gold = h["judges"].get("gold_score")
    agree = (f"; people and the gold judge agree on {gold['agreement']:.2f} of {gold['pairs']} pairs both decided"
             if gold and gold["agreement"] is not None else "")
    return (f"win rate of {h['model']} over {h['reference']} by people: {w['win_rate']:.2f} [{w['ci'][0]:.2f}, "
            f"{w['ci'][1]:.2f}] ({h['answers']} answers from {len(h['annotators'])} annotator(s) on "
            f"{h['answered_pairs']} pairs, {h['identical']} identical pairs counted as ties){agree}")
