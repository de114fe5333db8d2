"""Simulated annotators that work through the app's HTTP API as people do (``rlhf feedback simulate-team``).

Each one logs in with its own token, takes the next task of every project it may work on
(``GET /api/projects/{name}/next``), answers it from a gold judge's scores with the noise model of
:mod:`rlhfkit.feedback.simulate` (perceived quality u = gold + T·Gumbel, a careless click at ``flip_rate``, a
rating bias per annotator), and posts the answer with a fresh submission id; the server sees what a person's
browser would send. The judge needs each prompt's record (an answer key, keywords): ``records`` maps the
prompt text an annotator is shown to it (the recipe's prompt files); a prompt not among them is judged on its
text alone.

Answers by kind (responses as shown, A first): rate → the perceived score on 1–7; thumbs → up from 4; compare → the
larger u, a tie within ``tie_margin``, the strength from the ratings' gap; rank → sorted by u, near-equal neighbours
tied; arena → as compare, and "both bad" when the two tie below an acceptable rating; edit → the shown text (a
simulated annotator cannot rewrite).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

import httpx
import numpy as np

from rlhfkit.data.formats import prompt_text
from rlhfkit.feedback.importer import THUMBS_UP_FROM
from rlhfkit.feedback.simulate import annotator_biases, perceive, rank_order, to_rating

STRENGTHS = ("slightly", "clearly", "much")


@dataclass
class TeamSettings:
    """The noise of the team's answers and how long it keeps going."""

    temperature: float = 0.0  # Bradley–Terry temperature, in gold-score units
    flip_rate: float = 0.0  # a choice reversed (a careless click)
    bias_std: float = 0.0  # per-annotator rating bias, points of the 1–7 scale
    tie_margin: float = 0.0  # perceived scores this close tie
    score_range: tuple[float, float] = (0.0, 1.0)  # the judge's scores mapped onto the 1–7 scale
    idle_seconds: float = 0.0  # stop after this long with no task anywhere (0: at the first moment with none)
    poll_seconds: float = 2.0  # wait between looks for new tasks while idle
    max_answers: int = 0  # stop after this many answers in all (0: no limit)
    seed: int = 0
    projects: list[str] = field(default_factory=list)  # only these projects (empty: every one the token may see)


def answer_body(view: dict, gold: list[float], s: TeamSettings, rng: np.random.Generator, bias: float) -> dict:
    """The body an annotator posts for a task ``view`` (responses as shown) whose responses the judge scored ``gold``."""
    kind, lo, hi = view["kind"], *s.score_range
    u = perceive(gold, s.temperature, rng)
    careless = s.flip_rate > 0 and rng.random() < s.flip_rate
    body: dict = {"submission_id": uuid.uuid4().hex}
    if kind == "rate":
        return {**body, "score": int(rng.integers(1, 8)) if careless else to_rating(u[0], lo, hi, bias)}
    if kind == "thumbs":
        up = bool(rng.random() < 0.5) if careless else to_rating(u[0], lo, hi, bias) >= THUMBS_UP_FROM
        return {**body, "thumb": "up" if up else "down"}
    if kind == "edit":
        return {**body, "edited": view["responses"][0]["text"]}
    if kind == "rank":
        order = rank_order(u, s.flip_rate, rng, s.tie_margin)  # shown positions, best first
        ids = [r["id"] for r in view["responses"]]
        return {**body, "ranking": [[ids[j] for j in g] if isinstance(g, list) else [ids[g]] for g in order]}
    if kind in ("compare", "arena"):
        ra, rb = to_rating(u[0], lo, hi, 0.0), to_rating(u[1], lo, hi, 0.0)
        if abs(u[0] - u[1]) <= s.tie_margin:
            if kind == "arena" and max(ra, rb) < THUMBS_UP_FROM:
                return {**body, "choice": "both_bad"}
            return {**body, "choice": "tie"} if kind == "arena" else {**body, "choice": "tie", "strength": None}
        choice = "a" if u[0] > u[1] else "b"
        if careless:
            choice = "b" if choice == "a" else "a"
        if kind == "arena":
            return {**body, "choice": choice}
        return {**body, "choice": choice, "strength": STRENGTHS[min(max(abs(ra - rb), 1), 3) - 1]}
    raise ValueError(f"task kind {kind!r}: the simulated team cannot answer it")


class Member:
    """One simulated annotator: a token and its own random stream and rating bias."""

    def __init__(self, client: httpx.Client, token: str, bias: float, seed: int, number: int):
        self.client, self.headers, self.bias = client, {"Authorization": f"Bearer {token}"}, bias
        self.rng = np.random.default_rng([seed, number])
        self.name = self.get("/api/me")["name"]

    def get(self, path: str) -> dict | list:
        r = self.client.get(path, headers=self.headers)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict) -> dict:
        r = self.client.post(path, json=body, headers=self.headers)
        if r.status_code >= 400:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.json()


def run_team(url: str, tokens: list[str], judge: Callable[[list[dict], list[str]], list[float]],
             records: dict[str, dict], settings: TeamSettings, say: Callable[[str], None] = print,
             stop: Optional[Callable[[], bool]] = None) -> dict[str, int]:
    """Answer tasks until none is left for ``settings.idle_seconds`` (or ``stop()`` says so); returns the answers
    given per annotator."""
    if not tokens:
        raise ValueError("--token: give at least one annotator token")
    with httpx.Client(base_url=url.rstrip("/"), timeout=60.0) as client:
        biases = annotator_biases(len(tokens), settings.bias_std, settings.seed)
        team = [Member(client, t, b, settings.seed, i) for i, (t, b) in enumerate(zip(tokens, biases))]
        given = {m.name: 0 for m in team}
        idle_since = None
        while not (stop and stop()):
            did = 0
            for m in team:
                for p in m.get("/api/projects"):
                    if settings.projects and p["name"] not in settings.projects:
                        continue
                    view = m.get(f"/api/projects/{p['name']}/next")["task"]
                    if view is None:
                        continue
                    record = records.get(view["prompt"]) or {"prompt": view["prompt"]}
                    texts = [r["text"] for r in view["responses"]]
                    gold = [float(x) for x in judge([record] * len(texts), texts)]
                    m.post(f"/api/assignments/{view['assignment_id']}/answer", answer_body(view, gold, settings, m.rng, m.bias))
                    given[m.name] += 1
                    did += 1
            total = sum(given.values())
            if settings.max_answers and total >= settings.max_answers:
                break
            if did:
                idle_since = None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= settings.idle_seconds:
                break
            time.sleep(settings.poll_seconds)
        say(f"simulated team: {sum(given.values())} answers (" + ", ".join(f"{k} {v}" for k, v in given.items()) + ")")
        return given


def records_by_prompt(records: list[dict]) -> dict[str, dict]:
    """Prompt records keyed by the text the app shows an annotator."""
    return {prompt_text(r): r for r in records}
