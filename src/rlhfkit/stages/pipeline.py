"""``rlhf pipeline``: SFT → sample → feedback → reward model → PPO → eval → report, one command.

A recipe (``recipes/<name>/recipe.yaml``) holds one section per stage whose keys are that stage's config
keys; the pipeline fills in the paths. Each stage writes a ``.done.json`` marker when it finishes: a
stage with a marker is skipped, a stage folder without one is resumed from its checkpoint. With
``--rounds N`` the loop sample → feedback → reward model → PPO runs again from the newest policy
(iterated RLHF): each round's feedback is on the current policy's answers and the reward model trains on
all rounds' feedback. ``--budget-minutes`` is kept by a planner (``budget.py``): a probe at the start and
every finished stage measure this machine's speed, and the counts of the stages left are planned again
before each starts, PPO getting the rest of the budget as a deadline. A seeded split of the recipe's prompts
(``dev_prompts``) is held out of sampling and PPO: PPO evaluates it every ``eval_every`` updates, keeps each
evaluation as a numbered snapshot, and the final eval takes the snapshot with the best held-out proxy score.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.console import Console

from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    PipelineConfig,
    PPOConfig,
    RewardConfig,
    SampleConfig,
    SFTConfig,
    SimulateConfig,
    from_dict,
    save_config,
    to_dict,
)
from rlhfkit.data.formats import read_records, write_records
from rlhfkit.stages.budget import COUNTS, DEFAULT_PPO_SHARE, STAGE_SLACK, Planner, count_lines

console = Console(stderr=True)

RECIPES_DIR = Path(__file__).parent.parent / "recipes"
# Counts the budget's planner sets (the rest of each section is taken as written).
SCALED = {stage: [key] for stage, key in COUNTS.items()}
# The policy optimisations the pipeline runs after the reward model: the online ones in the PPO trainer, or DPO.
ONLINE = ("ppo", "grpo", "rloo", "reinforce++")
ALGOS = (*ONLINE, "dpo")
STAGES = ("sft", "sample", "feedback", "rm", "ppo", "dpo", "eval")  # the recipe's sections (and --set's stages)


@dataclass
class Recipe:
    """A recipe folder: ``recipe.yaml`` plus ``sft.jsonl``, ``prompts.jsonl``, ``eval.jsonl``."""

    name: str
    folder: Path
    judge: str  # gold judge for simulated feedback and evaluation
    budget_minutes: float  # the budget the stage settings below were sized for (2-core CPU)
    description: str = ""
    dev_prompts: int = 32  # prompts.jsonl prompts held out (seeded) for PPO's snapshot evaluations, never trained on; 0: none
    # the budget's share the policy optimisation keeps at least; sft, sample, rm and eval share the rest (budget.py)
    ppo_share: float = DEFAULT_PPO_SHARE
    sft: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)
    feedback: dict = field(default_factory=dict)
    rm: dict = field(default_factory=dict)
    algo: str | list = ""  # the policy optimisation: ppo, grpo, rloo, reinforce++ (the ppo section) or dpo (the dpo
    # section); several (a list, or comma-separated) train side by side from the same feedback and the eval compares them
    ppo: dict = field(default_factory=dict)
    dpo: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)


def available_recipes() -> list[str]:
    return sorted(p.parent.name for p in RECIPES_DIR.glob("*/recipe.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A recipe by name (shipped) or by folder path."""
    folder = Path(name_or_path)
    if not (folder / "recipe.yaml").exists():
        folder = RECIPES_DIR / name_or_path
    path = folder / "recipe.yaml"
    if not path.exists():
        raise ConfigError(f"{name_or_path}: no such recipe (known: {', '.join(available_recipes())})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {"judge", "budget_minutes", "dev_prompts", "ppo_share", "description", "algo", "sft", "sample", "feedback", "rm",
             "ppo", "dpo", "eval"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: {key}: unknown recipe key (known: {', '.join(sorted(known))})")
    for key in ("judge", "budget_minutes"):
        if key not in data:
            raise ConfigError(f"{path}: {key}: missing")
    for name in ("sft.jsonl", "prompts.jsonl", "eval.jsonl"):
        if not (folder / name).exists():
            raise ConfigError(f"{folder / name}: missing recipe data file")
    dev = data.get("dev_prompts", 0)
    if isinstance(dev, bool) or not isinstance(dev, int) or dev < 0:
        raise ConfigError(f"{path}: dev_prompts: expected a whole number of prompts ≥ 0, got {dev!r}")
    share = data.get("ppo_share", DEFAULT_PPO_SHARE)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share < 1.0:
        raise ConfigError(f"{path}: ppo_share: expected a fraction of the budget between 0 and 1, got {share!r}")
    if "algo" in data:  # "" is not one: a recipe that names no algo leaves the key out
        parse_algos(data["algo"], f"{path}: algo")
    if folder.resolve().is_relative_to(Path.cwd()):
        folder = folder.resolve().relative_to(Path.cwd())  # run folders and reports then name no machine path
    return Recipe(name=folder.name, folder=folder, **data)


def is_done(folder: Path) -> bool:
    return (folder / ".done.json").exists()


def mark_done(folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".done.json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")


def run_stage(name: str, folder: Path, fn: Callable[[], Any]) -> Any:
    """Run one stage unless its marker says it finished; time it and mark it done."""
    if is_done(folder):
        console.print(f"[green]pipeline: {name}: done already ({folder}), skipped[/green]")
        return None
    resumed = folder.exists()
    console.rule(f"pipeline: {name}" + (" (resuming)" if resumed else ""))
    t0 = time.perf_counter()
    result = fn()
    mark_done(folder, {"stage": name, "seconds": round(time.perf_counter() - t0, 1)})
    console.print(f"pipeline: {name} finished in {time.perf_counter() - t0:.0f} s")
    return result


class BudgetClock:
    """Minutes of the budget spent by this run folder, across reruns: a rerun continues the budget, not a new one.

    Saved to ``budget_clock.json`` whenever a stage ends, however it ends (finished, failed, Ctrl-C).
    """

    def __init__(self, out: Path):
        self.path = out / "budget_clock.json"
        self.before = json.loads(self.path.read_text(encoding="utf-8"))["spent_s"] if self.path.exists() else 0.0
        self.t0 = time.monotonic()

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.t0

    def save(self) -> None:
        self.path.write_text(json.dumps({"spent_s": round(self.seconds(), 1)}), encoding="utf-8")


def stage_config(cls: type, section: dict, where: str, **fixed: Any):
    """A stage config from a recipe section plus the pipeline's paths (which win)."""
    return from_dict(cls, {**section, **{k: v for k, v in fixed.items() if v is not None}}, where)


def round_dir(out: Path, r: int) -> Path:
    """Round 1 lives in the run folder itself (so the report finds rm/ and ppo/); later rounds in round<r>/."""
    return out if r == 1 else out / f"round{r}"


def app_feedback(cfg: PipelineConfig, recipe: Recipe, candidates: Path, feedback: Path, round_no: int) -> None:
    """Feedback from people: import the candidates into the app, wait for answers, export them."""
    from rlhfkit.feedback.db import Database
    from rlhfkit.feedback.export import export_records, wait_for_answers
    from rlhfkit.feedback.importer import import_candidates

    project = f"{recipe.name}-{Path(cfg.output).name}-r{round_no}"
    kinds = recipe.feedback.get("kinds", ["rank", "compare"])
    db = Database(cfg.db)
    marker = feedback.with_suffix(".imported")
    if not marker.exists():
        import_candidates(db, project, candidates, kinds)
        marker.write_text(project)
    console.print(f"pipeline: annotate project [bold]{project}[/bold]: start the app with "
                  f"`rlhf feedback serve --db {cfg.db}` and open http://127.0.0.1:8000/ with an annotator token "
                  f"(`rlhf feedback add-annotator --db {cfg.db} ...`)")
    if cfg.wait:
        wait_for_answers(db, project, cfg.poll_seconds, lambda m: console.print(f"pipeline: feedback: {m}"), cfg.target)
    n = write_records(feedback, export_records(db, project))
    if n == 0:
        raise RuntimeError(f"project {project}: no answers to export yet; annotate some tasks or rerun with --no-wait later")


def app_human_eval(cfg: PipelineConfig, recipe: Recipe, out: Path) -> dict:
    """People judge the tuned policy against the SFT model, blind, in the app (an arena project of the evaluation's
    answers) when the feedback came from people; their verdict goes to eval/human.json for the report."""
    from rlhfkit.feedback.arena import arena_results, human_summary, make_arena
    from rlhfkit.feedback.export import wait_for_answers
    from rlhfkit.feedback.db import Database

    db = Database(cfg.db)
    try:
        info = make_arena(db, f"{recipe.name}-{out.name}-arena", out / "eval",
                          annotators_per_task=int(recipe.feedback.get("arena_annotators", 1)), seed=cfg.seed)
        console.print(f"pipeline: people judge {info['model']} against {info['reference']}: arena project "
                      f"[bold]{info['project']}[/bold], {info['tasks']} blind pairs ({info['identical']} identical "
                      f"ones count as ties)")
        if cfg.wait:
            wait_for_answers(db, info["project"], cfg.poll_seconds, lambda m: console.print(f"pipeline: {m}"))
        result = arena_results(db, out / "eval", seed=cfg.seed)
    finally:
        db.dispose()
    console.print(f"pipeline: {human_summary(result)}")
    return result


def parse_algos(value: Any, where: str = "algo") -> list[str]:
    """One algorithm or several ("ppo,dpo", or a list), each once, in the order given."""
    names = value if isinstance(value, list) else str(value).split(",")
    algos = [str(a).strip() for a in names if str(a).strip()]
    for a in algos:
        if a not in ALGOS:
            raise ConfigError(f"{where}: expected one of {', '.join(ALGOS)} (or several, comma-separated), got {a!r}")
    if not algos or len(set(algos)) != len(algos):
        raise ConfigError(f"{where}: expected one or more different algorithms, got {value!r}")
    return algos


def policy_algos(cfg: PipelineConfig, recipe: Recipe) -> list[str]:
    """The policy optimisations a run does: the command's ``algo``, else an override's ``ppo.algo``, the recipe's
    ``algo``, its ppo section's ``algo``, else PPO. Several train side by side, one round only: each starts from the
    same SFT model and learns from the same feedback and reward model, so the eval compares the algorithms alone."""
    algos = parse_algos(cfg.algo or cfg.overrides.get("ppo", {}).get("algo") or recipe.algo or recipe.ppo.get("algo")
                        or "ppo")
    if len(algos) > 1 and cfg.rounds > 1:
        raise ConfigError(f"algo: {', '.join(algos)}: several algorithms are compared on one round's feedback; "
                          f"rounds {cfg.rounds} needs one algorithm (the next round samples from its policy)")
    return algos


def stage_folder(algo: str, several: bool) -> str:
    """A policy optimisation's folder in a round: ``ppo`` for every online algorithm (``dpo`` for DPO) when one runs;
    when several do, each its own name (``reinforce++`` as ``reinforcepp``)."""
    if algo == "dpo":
        return "dpo"
    return algo.replace("+", "p") if several else "ppo"


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or resume) every stage; returns the evaluation summary."""
    from rlhfkit.data.splits import split_records
    from rlhfkit.eval.report import build_report, summary_lines
    from rlhfkit.feedback.simulate import simulate_feedback
    from rlhfkit.stages.evaluate import evaluate_models
    from rlhfkit.stages.reward_model import train_reward
    from rlhfkit.stages.sample import sample_candidates
    from rlhfkit.stages.sft import train_sft

    if cfg.feedback not in ("simulated", "app"):
        raise ConfigError(f"feedback: expected simulated or app, got {cfg.feedback!r}")
    for stage in cfg.overrides:
        if stage not in STAGES:
            raise ConfigError(f"overrides: {stage}: unknown stage ({', '.join(STAGES)})")
    recipe = load_recipe(cfg.recipe)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    clock = BudgetClock(out)

    def timed_stage(name: str, folder: Path, fn: Callable[[], Any]) -> Any:
        try:
            return run_stage(name, folder, fn)
        finally:
            clock.save()  # however the stage ended

    budget = cfg.budget_minutes or recipe.budget_minutes
    sections = {k: {**getattr(recipe, k), **cfg.overrides.get(k, {})} for k in STAGES}
    algos = policy_algos(cfg, recipe)
    several = len(algos) > 1
    common = {"seed": cfg.seed, "threads": cfg.threads}
    where = str(recipe.folder / "recipe.yaml")
    console.print(f"pipeline: recipe {recipe.name} ({recipe.description.strip() or 'no description'}), "
                  f"policy optimisation {', '.join(algos)}, budget {budget:g} min, output {out}")
    # The budget's planner: counts from this machine's measured speed (budget.py). The sections' counts are the
    # most a stage gets, except PPO's: it gets the rest of the budget, capped only by an override's max_steps.
    planner = Planner(out, sections, budget, cfg.rounds, ppo_cap=cfg.overrides.get("ppo", {}).get("max_steps"),
                      deadline=cfg.deadline and sections["ppo"].get("time_budget_minutes") is None,
                      eval_reserve_minutes=cfg.eval_reserve_minutes, n_dev=recipe.dev_prompts, policies=len(algos),
                      ppo_share=recipe.ppo_share)
    planner.probe(cfg.model, recipe.folder, cfg.threads)
    sec = sections

    sft_dir = out / "sft"
    if not is_done(sft_dir):
        sec, _ = planner.plan("sft", clock.seconds(), resuming=sft_dir.exists())
    sft_cfg = stage_config(SFTConfig, sec["sft"], where, model=cfg.model, data=str(recipe.folder / "sft.jsonl"),
                           output=str(sft_dir), resume=True, **common)
    timed_stage("sft", sft_dir, lambda: train_sft(sft_cfg))
    planner.measured("sft", sft_dir)

    # A LoRA SFT run is merged (merge_lora) so that PPO's own adapters sit on the SFT weights and
    # "adapters off" is the SFT model: the reference then costs no second copy of the weights.
    reference = str(sft_dir / "merged") if (sft_dir / "merged").exists() else str(sft_dir)
    policy = reference
    train_prompts, dev_prompts = dev_split(recipe, out, cfg.seed)
    feedback_files: list[Path] = []
    for r in range(1, cfg.rounds + 1):
        rd = round_dir(out, r)
        rd.mkdir(parents=True, exist_ok=True)
        candidates, feedback = rd / "candidates.jsonl", rd / "feedback.jsonl"
        sample_minutes = None
        if not is_done(rd / "sample"):
            sec, plan = planner.plan("sample", clock.seconds(), r, resuming=(rd / "sample").exists())
            if cfg.deadline and sec["sample"].get("time_budget_minutes") is None:
                # a machine slower than the probe said (busy, throttled) costs prompts, not minutes past the budget
                planned = plan["stages"]["sample"]
                sample_minutes = STAGE_SLACK * planned["predicted_s"] / planned["runs"] / 60
        sample_cfg = stage_config(SampleConfig, sec["sample"], where, model=policy, prompts=str(train_prompts),
                                  output=str(candidates), metrics=str(rd / "sample" / "metrics.jsonl"),
                                  seed=cfg.seed + r, threads=cfg.threads)
        if sample_minutes is not None:
            sample_cfg.time_budget_minutes = sample_minutes
            console.print(f"pipeline: sampling (round {r}) stops at {sample_minutes:.1f} min "
                          f"({STAGE_SLACK:g} × its planned time) with the prompts sampled by then")
        timed_stage(f"sample (round {r})", rd / "sample", lambda: sample_candidates(sample_cfg))
        planner.measured("sample", rd / "sample", f"sample (round {r})", units=count_lines(candidates))
        if cfg.feedback == "simulated":
            sim = {k: v for k, v in sec["feedback"].items() if k not in ("kinds", "arena_annotators")}
            sim_cfg = stage_config(SimulateConfig, sim, where, judge=recipe.judge, candidates=str(candidates),
                                   output=str(feedback), seed=cfg.seed + r)
            timed_stage(f"feedback (round {r}, simulated)", rd / "feedback", lambda: simulate_feedback(sim_cfg))
        else:
            timed_stage(f"feedback (round {r}, app)", rd / "feedback", lambda: app_feedback(cfg, recipe, candidates, feedback, r))
        feedback_files.append(feedback)
        # The reward model trains on every round's feedback so far.
        all_feedback = rd / "feedback_all.jsonl"
        if not is_done(rd / "rm"):
            write_records(all_feedback, [rec for f in feedback_files for rec in read_records(f, "auto")])
            sec, _ = planner.plan("rm", clock.seconds(), r, resuming=(rd / "rm").exists())
        rm_cfg = stage_config(RewardConfig, sec["rm"], where, data=str(all_feedback), output=str(rd / "rm"),
                              resume=True, **common)
        timed_stage(f"reward model (round {r})", rd / "rm", lambda: train_reward(rm_cfg))
        planner.measured("rm", rd / "rm", f"rm (round {r})")
        if cfg.feedback == "simulated":
            rm_gold_check(rd / "rm", candidates, recipe.judge)
        # the dev prompts: a held-out evaluation and snapshot every eval_every updates (2 unless the recipe says),
        # with the gold judge beside the proxy when the feedback is simulated (there the judge is who gave it).
        # DPO takes PPO's place in the plan: this PPO config then only sizes the slot whose deadline DPO gets.
        # Several algorithms share the slot: each starts from this round's policy and gets an equal part of what is left.
        tuned = {}
        for algo in algos:
            tuned[algo] = policy_optimisation(cfg, recipe, algo, sec, where, policy, reference, rd, r, train_prompts,
                                              dev_prompts, all_feedback, planner, clock, several, budget, timed_stage, common)
        if not several:
            policy = tuned[algos[0]]

    if not is_done(out / "eval"):  # eval last: what PPO left, at most its count
        sec, _ = planner.plan("eval", clock.seconds())
    last_rm = round_dir(out, cfg.rounds) / "rm"
    # perplexity on SFT's held-out examples: its eval_data, or the same seeded split it made, when it held any out
    sft_heldout = Path(sft_cfg.eval_data) if sft_cfg.eval_data else out / "sft_heldout.jsonl"
    if not sft_cfg.eval_data:
        _, sft_held = split_records(read_records(sft_cfg.data, "sft"), sft_cfg.eval_fraction, sft_cfg.seed)
        if sft_held:
            write_records(sft_heldout, sft_held)
    # each online algorithm's snapshot by the held-out proxy; DPO keeps no held-out snapshots: its last policy
    models = [f"{a}={path if a == 'dpo' else chosen_policy(Path(path))}" for a, path in tuned.items()]
    eval_cfg = stage_config(EvalConfig, sec["eval"], where, models=[f"sft={reference}", *models],
                            prompts=str(recipe.folder / "eval.jsonl"), output=str(out / "eval"), reference=reference,
                            judge=recipe.judge, reward=str(last_rm), best_of=cfg.best_of or None,
                            sft_data=str(sft_heldout) if sft_heldout.exists() else None, **common)
    timed_stage("eval", out / "eval", lambda: evaluate_models(eval_cfg))
    human = app_human_eval(cfg, recipe, out) if cfg.feedback == "app" else None
    report = build_report(out)
    ev = json.loads((out / "eval" / "eval.json").read_text(encoding="utf-8"))
    lines = summary_lines(ev)
    if human:
        from rlhfkit.feedback.arena import human_summary

        lines.append(human_summary(human))
    console.rule("pipeline: done")
    print_before_after(out / "eval" / "samples.jsonl", n=3)
    print(f"report: {report}")
    for line in lines:
        print(line)
    return {"report": str(report), "summary": lines}


def policy_optimisation(cfg: PipelineConfig, recipe: Recipe, algo: str, sec: dict, where: str, policy: str, reference: str,
                        rd: Path, r: int, train_prompts: Path, dev_prompts: Path | None, all_feedback: Path,
                        planner: Planner, clock: BudgetClock, several: bool, budget: float,
                        timed_stage: Callable, common: dict) -> str:
    """One policy optimisation of round ``r`` (PPO or a critic-free method in the PPO trainer, or DPO) in its slot of
    the budget; returns the tuned policy's path."""
    from rlhfkit.stages.dpo import train_dpo
    from rlhfkit.stages.ppo import train_ppo

    stage_dir = rd / stage_folder(algo, several)
    ppo_section = {"eval_every": 2, **sec["ppo"], **({"algo": algo} if algo in ONLINE else {})}
    ppo_cfg = stage_config(PPOConfig, ppo_section, where, policy=policy, reward=str(rd / "rm"),
                           prompts=str(train_prompts), output=str(stage_dir),
                           reference=reference if r > 1 else None, resume=True,
                           eval_prompts=str(dev_prompts) if dev_prompts else None,
                           eval_judge=recipe.judge if cfg.feedback == "simulated" else None, **common)
    minutes = None
    if cfg.deadline and ppo_cfg.time_budget_minutes is None and not is_done(stage_dir):
        # planned as PPO will run (its held-out evaluations included); the reserve: what comes after this slot
        # (the other algorithms' slots, later rounds, eval, the report) and PPO's own seconds outside its updates
        _, plan = planner.plan("ppo", clock.seconds(), r, resuming=stage_dir.exists(), ppo=to_dict(ppo_cfg))
        ppo_cfg.max_steps = plan["stages"]["ppo"]["count"]
        minutes = ppo_minutes(plan["aim_s"] / 60, clock.seconds() / 60, plan["ppo_reserve_s"] / 60,
                              planner.left["ppo"], floor=0.0)  # the plan's aim: 95 % of the budget, over the slots left
        ppo_cfg.time_budget_minutes = minutes
    label = f"{'DPO' if algo == 'dpo' else algo.upper()} (round {r})"
    if algo == "dpo":
        # offline on every round's feedback so far, from the current policy (under LoRA, adapters off = it is
        # the reference); the steps are the dpo section's, the deadline PPO's slot's; it answers the dev prompts
        # as PPO would (its length and temperature), scored by the reward model and, when simulated, the judge
        dpo_cfg = stage_config(DPOConfig, sec["dpo"], where, model=policy, data=str(all_feedback), output=str(stage_dir),
                               resume=True, eval_prompts=ppo_cfg.eval_prompts, eval_judge=ppo_cfg.eval_judge,
                               eval_reward=str(rd / "rm") if ppo_cfg.eval_prompts else None,
                               eval_max_new_tokens=ppo_cfg.max_new_tokens, eval_temperature=ppo_cfg.temperature,
                               **common)
        if minutes is not None and dpo_cfg.time_budget_minutes is None:
            dpo_cfg.time_budget_minutes = minutes
            console.print(f"pipeline: {label} gets at most {minutes:.1f} min of the {budget:g}-minute budget "
                          f"(PPO's slot; max_steps {dpo_cfg.max_steps}; the deadline ends it)")
        timed_stage(label, stage_dir, lambda: train_dpo(dpo_cfg))
        planner.took_ppo_slot(stage_dir, label)
        return str(stage_dir / "merged") if (stage_dir / "merged").exists() else str(stage_dir)
    if minutes is not None:
        console.print(f"pipeline: {label} gets at most {minutes:.1f} min of the {budget:g}-minute budget "
                      f"(max_steps {ppo_cfg.max_steps}; the deadline ends it)")
    timed_stage(label, stage_dir, lambda: train_ppo(ppo_cfg))
    planner.measured("ppo", stage_dir, label)
    return str(stage_dir)


def ppo_minutes(budget: float, elapsed: float, reserve: float, rounds_left: int, floor: float = 1.0) -> float:
    """PPO's share of what is left of the budget: the rest less the reserve, split over the rounds left.

    At least ``floor`` minutes. PPO makes (and saves) one update whatever its deadline, so the pipeline's
    floor is 0: a run already over its budget then spends no minute more on PPO than that one update.
    """
    return max(floor, (budget - elapsed - reserve) / max(rounds_left, 1))


def rm_gold_check(rm_dir: Path, candidates: Path, judge: str) -> dict | None:
    """The reward model's pair accuracy against the GOLD judge on its held-out prompts' candidates.

    The figure that says whether PPO has something true to climb (simulated feedback only: there the gold
    judge exists). Written to ``rm/gold_check.json`` and printed; computed once.
    """
    from rlhfkit.data.formats import prompt_key
    from rlhfkit.data.groups import gold_groups
    from rlhfkit.judges import get_judge
    from rlhfkit.stages.reward_model import score_groups

    path = rm_dir / "gold_check.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    split = rm_dir / "split.json"
    if not split.exists():
        return None
    held = {prompt_key(p) for p in json.loads(split.read_text(encoding="utf-8")).get("eval_prompts", [])}
    records = [c for c in read_records(candidates, "candidates") if prompt_key(c) in held]
    if not records:
        return None
    groups = gold_groups(records, get_judge(judge))
    out = {"judge": judge, "held_out_prompts": len(records), "gold_pairs": 0, "gold_accuracy": None}
    if groups:
        res = score_groups(rm_dir, groups, batch_size=32)
        out.update(gold_pairs=res["n_pairs"], gold_accuracy=res["accuracy"])
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    acc = "no pairs whose gold scores differ" if out["gold_accuracy"] is None else \
        f"pair accuracy {out['gold_accuracy']:.2f} ({out['gold_pairs']} pairs)"
    console.print(f"pipeline: reward model vs the gold judge {judge!r} on {len(records)} held-out prompts: {acc}")
    return out


def print_before_after(samples_path: Path, n: int = 3) -> None:
    """The first ``n`` held-out prompts with the answer of each evaluated model."""
    from rlhfkit.tracking import read_metrics

    by_prompt: dict[int, list[dict]] = {}
    for rec in read_metrics(samples_path):  # a plain JSONL reader
        if not rec.get("sample"):  # each model's first answer to the prompt
            by_prompt.setdefault(rec["index"], []).append(rec)
    for index in sorted(by_prompt)[:n]:
        rows = by_prompt[index]
        print(f"\nprompt: {rows[0]['prompt']}")
        for row in rows:
            gold = f" (gold {row['gold_score']:.2f})" if row.get("gold_score") is not None else ""
            print(f"  {row['model']}{gold}: {' '.join(row['response'].split())}")
    print()


def dev_split(recipe: Recipe, out: Path, seed: int) -> tuple[Path, Path | None]:
    """(training prompts, dev prompts or None): ``recipe.dev_prompts`` of the recipe's prompts held out, seeded.

    PPO evaluates its snapshots on the dev prompts and the pipeline takes one by them, so no dev prompt may be one
    that sampling, feedback or PPO trained on. Written once into the run folder (``prompts_train.jsonl``, then
    ``dev_prompts.jsonl``, whose presence says the split is complete) and reused by every rerun.
    """
    from rlhfkit.data.splits import split_records

    train, dev = out / "prompts_train.jsonl", out / "dev_prompts.jsonl"
    if dev.exists():
        return train, dev
    source = recipe.folder / "prompts.jsonl"
    records = read_records(source, "prompt")
    if not recipe.dev_prompts:
        return source, None
    if recipe.dev_prompts >= len(records):
        raise ConfigError(f"{recipe.folder / 'recipe.yaml'}: dev_prompts: {recipe.dev_prompts} of the {len(records)} "
                          f"prompts in {source} would leave none to train on; hold out fewer (0: none)")
    kept, held = split_records(records, recipe.dev_prompts / len(records), seed)
    write_records(train, kept)
    write_records(dev.with_suffix(".tmp"), held)
    dev.with_suffix(".tmp").replace(dev)  # whole or not at all
    console.print(f"pipeline: {len(held)} of the recipe's {len(records)} prompts held out as PPO's dev prompts ({dev})")
    return train, dev


def chosen_policy(ppo_dir: Path) -> str:
    """The PPO policy the final eval takes: the snapshot with the highest held-out proxy score (``snapshots.json``'s
    ``chosen``; the gold judge checks that choice in the report, it never makes it). The final policy instead when
    PPO kept no snapshots, when no update beat the start (step 0, the reference itself), or when the chosen
    snapshot's weights were not kept."""
    from rlhfkit.tracking import read_snapshots

    snaps = read_snapshots(ppo_dir)
    if snaps is None:
        console.print("pipeline: PPO has no snapshots (no dev prompts): the final policy is evaluated")
        return str(ppo_dir)
    rows = {s["step"]: s for s in snaps["snapshots"]}
    pick, start, last = rows[snaps["chosen"]], rows[min(rows)], max(rows)
    why = (f"the highest held-out reward-model score of the {len(rows)} snapshots, {pick['rm_score']:.3f} "
           f"(start {start['rm_score']:.3f})")
    if pick["step"] == 0:
        console.print(f"pipeline: no PPO update beat the start on the held-out proxy ({why}): the final policy "
                      f"(step {last}) is evaluated instead")
        return str(ppo_dir)
    if not pick["path"]:
        console.print(f"pipeline: PPO snapshot step {pick['step']} has {why}, but its weights were not kept "
                      f"(keep_snapshots): the final policy (step {last}) is evaluated instead")
        return str(ppo_dir)
    console.print(f"pipeline: PPO snapshot step {pick['step']} of {last} is evaluated as ppo: it has {why}")
    return str(ppo_dir / pick["path"])
