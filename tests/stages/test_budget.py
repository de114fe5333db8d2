import json
import re

import pytest

import rlhfkit.stages.sft as sft
from rlhfkit.config import PipelineConfig
from rlhfkit.stages.budget import AIM, COUNTS, MINIMUM, STAGES, Rates, answer_steps, corrected, cost_keys, make_plan, stage_seconds
from rlhfkit.stages.pipeline import load_recipe, run_pipeline

ALL_LEFT = {"sft": 1, "sample": 1, "rm": 1, "ppo": 1, "eval": 1}


def tutor_sections() -> dict:
    recipe = load_recipe("tutor")
    return {k: dict(getattr(recipe, k)) for k in ("sft", "sample", "feedback", "rm", "ppo", "eval")}


def rates(slow: float = 1.0) -> Rates:
    """Fixed rates of about the 2-core machine's size (a 135M policy, MiniLM reward model); ``slow``× every one."""
    return Rates(load_s=3 * slow, rm_load_s=1.5 * slow, prefill_token_s=4e-4 * slow, step_s=0.05 * slow,
                 step_row_s=0.004 * slow, train_token_s=2.75e-3 * slow, ppo_token_s=2.2e-3 * slow, train_opt_s=0.05 * slow,
                 rm_token_s=2.1e-4 * slow, rm_opt_s=0.05 * slow, prompt_tokens=150, eval_prompt_tokens=150, sft_width=250, rm_width=250,
                 n_prompts=464, n_eval=48, n_sft_heldout=7)


def counts(plan: dict) -> dict:
    return {s: row["count"] for s, row in plan["stages"].items()}


def test_a_smaller_budget_or_a_slower_machine_gets_smaller_counts_and_fewer_ppo_updates():
    sections = tutor_sections()
    full = counts(make_plan(sections, rates(), 17 * 60, 10, ALL_LEFT, n_dev=32))
    half = counts(make_plan(sections, rates(), 8 * 60, 10, ALL_LEFT, n_dev=32))
    slow = counts(make_plan(sections, rates(slow=3.0), 17 * 60, 10, ALL_LEFT, n_dev=32))
    assert set(full) == set(STAGES)
    assert all(half[s] <= full[s] for s in STAGES) and half["ppo"] < full["ppo"]
    assert all(slow[s] <= full[s] for s in STAGES) and slow["ppo"] < full["ppo"]
    assert sum(half.values()) < sum(full.values()) and sum(slow.values()) < sum(full.values())
    # never above the recipe's counts (PPO: what fits), never below the minimums
    recipe = {s: sections[s][COUNTS[s]] for s in ("sft", "sample", "rm", "eval")}
    for plan in (full, half, slow):
        assert all(MINIMUM[s] <= plan[s] <= recipe[s] for s in recipe)


def test_budget_beyond_the_recipes_counts_goes_to_ppo_and_the_plan_ends_within_the_budget():
    sections = tutor_sections()
    plan = make_plan(sections, rates(), 17 * 60, 10, ALL_LEFT, n_dev=32)
    assert plan["predicted_end_s"] <= AIM * 17 * 60
    hour = make_plan(sections, rates(), 60 * 60, 10, ALL_LEFT, n_dev=32)
    assert all(hour["stages"][s]["count"] == sections[s][COUNTS[s]] for s in ("sft", "sample", "rm", "eval"))
    assert hour["stages"]["ppo"]["count"] > 3 * plan["stages"]["ppo"]["count"]  # more than the recipe's 20, too
    assert re.match(r"\d+\.\d\d s per SFT step \(probe\) \+ \d+ s fixed → \d+ steps", plan["stages"]["sft"]["why"])
    # as PPO starts, its deadline is the rest less what comes after it: eval (reserved from the rates) and
    # PPO's own seconds outside its updates
    at_ppo = make_plan(sections, rates(), 17 * 60, 400, {"ppo": 1, "eval": 1}, n_dev=32)
    ppo, ev = at_ppo["stages"]["ppo"], at_ppo["stages"]["eval"]
    assert at_ppo["ppo_reserve_s"] == pytest.approx(ev["predicted_s"] + ppo["fixed_s"], abs=0.2)
    assert at_ppo["ppo_deadline_s"] == pytest.approx(AIM * 17 * 60 - 400 - at_ppo["ppo_reserve_s"], abs=0.2)
    assert ev["count"] == 48  # the stages before PPO took what the plan gave them: eval keeps its count


def test_short_sft_answers_predict_short_decoding_and_leave_the_time_to_sft():
    """A batch decodes until its longest answer ends; the SFT answers' lengths say how long that is (the asr recipe's
    transcripts end near 17 tokens of 40), capped at max_new_tokens. The time saved goes to the scaled stages."""
    short = Rates(**{**rates().__dict__, "answer_tokens": [10, 12, 9, 17] * 16})  # 64 answers, batches of 32: 17 steps
    long = Rates(**{**rates().__dict__, "answer_tokens": [300] * 64})
    assert answer_steps(rates(), 80, 32) == 80  # no answers read (an older plan.json): max_new_tokens
    assert answer_steps(short, 80, 32) == 17 and answer_steps(short, 12, 32) == 12 and answer_steps(long, 80, 32) == 80
    assert answer_steps(Rates(**{**rates().__dict__, "answer_tokens": [5, 20, 5, 5]}), 80, 2) == 13  # (20 + 5) / 2, up
    sections = tutor_sections()
    keys = cost_keys(sections)
    for stage in ("sample", "ppo"):
        assert stage_seconds(stage, 10, keys[stage], short)[1] < stage_seconds(stage, 10, keys[stage], rates())[1]
        assert stage_seconds(stage, 10, keys[stage], long)[1] == pytest.approx(stage_seconds(stage, 10, keys[stage], rates())[1])
    # eval, last and not to be cut short, keeps max_new_tokens: a tuned policy may stop ending its answers
    assert stage_seconds("eval", 10, keys["eval"], short) == stage_seconds("eval", 10, keys["eval"], rates())
    tight = 12 * 60  # a budget the recipe's counts do not fit: SFT gets what the short answers leave
    assert (counts(make_plan(sections, short, tight, 10, ALL_LEFT, n_dev=32))["sft"]
            > counts(make_plan(sections, rates(), tight, 10, ALL_LEFT, n_dev=32))["sft"])


def test_a_finished_stage_corrects_the_rates_and_the_rest_is_planned_again():
    sections = tutor_sections()
    r = rates()
    before = make_plan(sections, r, 17 * 60, 10, ALL_LEFT, n_dev=32)
    step = before["stages"]["sft"]["unit_s"]
    # SFT ran its 15 steps at twice the probe's step time, and took 40 s more than the plan said
    r2 = corrected(r, "sft", 15 * 2 * step + before["stages"]["sft"]["fixed_s"] + 40, [3 * step] + [2 * step] * 14, 15,
                   sections)
    assert r2.scale["train"] == pytest.approx(2.0) and r.scale["train"] == 1.0  # a copy: the probe's rates stay
    left = {**ALL_LEFT, "sft": 0}
    spent = 10 + 15 * 2 * step + before["stages"]["sft"]["fixed_s"] + 40
    after = make_plan(sections, r2, 17 * 60, spent, left, n_dev=32)
    assert "sft" not in after["stages"] and after["stages"]["rm"]["why"].endswith(f"fit {after['stages']['rm']['predicted_s'] / 60:.1f} min")
    assert all(after["stages"][s]["count"] <= before["stages"][s]["count"] for s in ("sample", "rm", "eval", "ppo"))
    assert after["stages"]["ppo"]["count"] < before["stages"]["ppo"]["count"]  # PPO's training passes cost twice too


def test_a_resumed_stage_keeps_its_count_and_an_override_caps_ppo():
    sections = tutor_sections()
    plan = make_plan(sections, rates(), 17 * 60, 10, ALL_LEFT, n_dev=32, held={"sft": 11}, ppo_cap=2)
    assert plan["stages"]["sft"]["count"] == 11 and "resumed" in plan["stages"]["sft"]["why"]
    assert plan["stages"]["ppo"]["count"] == 2
    fixed = make_plan(sections, rates(), 17 * 60, 10, ALL_LEFT, n_dev=32, held={"ppo": 20}, deadline=False)
    assert fixed["stages"]["ppo"]["count"] == 20


def test_a_tiny_model_run_plans_less_when_its_budget_is_smaller(tmp_path, monkeypatch, capsys):
    """Two tiny-model pipeline runs, the recipe's budget and 5 minutes, stopped as SFT starts: their plan.json (probe included)."""

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(sft, "train_sft", stop)
    overrides = {"rm": {"model": "tiny-minilm"}}
    first, big, small = tmp_path / "first", tmp_path / "big", tmp_path / "small"
    with pytest.raises(Stop):
        run_pipeline(PipelineConfig(recipe="tutor", output=str(first), model="tiny", overrides=overrides, threads=1))
    err = capsys.readouterr().err
    budget = load_recipe("tutor").budget_minutes
    assert "pipeline: probe took" in err and f"budget plan before sft: {budget:g} min budget" in err
    # the same measured speed for both, and neither spends its budget on a probe (a second probe would differ by
    # the machine's noise, and the first probe's seconds by how busy the machine is, not by the budget)
    saved = json.loads((first / "plan.json").read_text())
    for folder, minutes in ((big, None), (small, 5)):
        folder.mkdir()
        (folder / "plan.json").write_text(json.dumps({"probe": saved["probe"]}))
        with pytest.raises(Stop):
            run_pipeline(PipelineConfig(recipe="tutor", output=str(folder), model="tiny", budget_minutes=minutes,
                                        overrides=overrides, threads=1))
    plans = [json.loads((folder / "plan.json").read_text())["plans"][0] for folder in (big, small)]
    assert [p["at"] for p in plans] == ["sft/1", "sft/1"] and [p["budget_s"] for p in plans] == [budget * 60, 5 * 60]
    wide, narrow = (counts(p) for p in plans)
    assert all(narrow[s] <= wide[s] for s in STAGES) and narrow["ppo"] < wide["ppo"]
    assert sum(narrow.values()) < sum(wide.values())
    assert all(row["why"] for p in plans for row in p["stages"].values())


def test_a_damaged_plan_json_is_a_clear_error_naming_the_file_and_line_and_a_bad_dev_prompts_too(tmp_path):
    import shutil

    from rlhfkit.config import ConfigError
    from rlhfkit.stages.budget import Planner

    (tmp_path / "plan.json").write_text('{"probe": {"load_s": 2.5,\n  "step_s": }')
    with pytest.raises(ConfigError, match=r"plan\.json: line 2: not valid JSON"):
        Planner(tmp_path, {}, 15)
    assert (tmp_path / "plan.json").read_text().startswith('{"probe"')  # left as it was
    recipe = tmp_path / "recipe"
    shutil.copytree(load_recipe("tutor").folder, recipe)
    text = (recipe / "recipe.yaml").read_text().replace("dev_prompts: 24", "dev_prompts: many")
    (recipe / "recipe.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"recipe\.yaml: dev_prompts: expected a whole number of prompts ≥ 0, got 'many'"):
        load_recipe(str(recipe))
    (recipe / "recipe.yaml").write_text(text.replace("dev_prompts: many", "dev_prompts: 24\nppo_share: 1.5"))
    with pytest.raises(ConfigError, match=r"recipe\.yaml: ppo_share: expected a fraction of the budget between 0 and 1, "
                                          r"got 1\.5"):
        load_recipe(str(recipe))


def test_a_recipe_s_ppo_share_gives_the_stages_before_it_the_rest_of_the_budget():
    sections = {**tutor_sections(), "sft": {**tutor_sections()["sft"], "max_steps": 400}}  # more SFT than fits
    default = make_plan(sections, rates(), 17 * 60, 10, ALL_LEFT, n_dev=32)
    small = make_plan(sections, rates(), 17 * 60, 10, ALL_LEFT, n_dev=32, non_ppo_share=0.8)
    assert default["non_ppo_share"] == 0.6 and small["non_ppo_share"] == 0.8
    assert default["target_s"] == pytest.approx(0.6 * AIM * 17 * 60 - 10, abs=0.2)
    assert small["target_s"] == pytest.approx(0.8 * AIM * 17 * 60 - 10, abs=0.2)
    assert small["stages"]["sft"]["count"] > default["stages"]["sft"]["count"]
    assert small["ppo_deadline_s"] < default["ppo_deadline_s"]
    assert load_recipe("tutor").ppo_share == 0.4 and load_recipe("asr").ppo_share == 0.2


def test_the_planner_plans_with_the_recipe_s_ppo_share(tmp_path):
    from rlhfkit.stages.budget import Planner

    planner = Planner(tmp_path, tutor_sections(), 17, ppo_share=0.2)
    planner.rates = rates()
    _, plan = planner.plan("sft", 10.0)
    assert plan["non_ppo_share"] == 0.8
    assert json.loads((tmp_path / "plan.json").read_text())["plans"][0]["non_ppo_share"] == 0.8


def finished_stage(folder, seconds: float, steps: list[float]):
    """A stage folder as a finished stage leaves it: its .done.json and its metrics' step times."""
    folder.mkdir(parents=True)
    (folder / ".done.json").write_text(json.dumps({"stage": folder.name, "seconds": seconds}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "time_step_s": t}) + "\n"
                                                  for i, t in enumerate(steps)))
    return folder


def test_a_stage_far_faster_than_a_busy_probe_said_measures_the_machine_again(tmp_path, monkeypatch):
    """The probe ran while the machine was busy (3× slow); SFT then ran at the quiet speed. The planner probes
    again, plans from the new rates, and records why; a stage near its rates does not, and two re-probes are
    the most."""
    import rlhfkit.stages.budget as budget
    from rlhfkit.stages.budget import LOAD_CHANGE, MAX_REPROBES, Planner

    sections = tutor_sections()
    machine = [rates(slow=3.0), rates(), rates(), rates()]  # what each probe finds: busy first, then quiet
    calls = []

    def fake_probe(sections_, model, folder, threads=0):
        calls.append((model, threads))
        return machine[len(calls) - 1]

    monkeypatch.setattr(budget, "probe", fake_probe)
    planner = Planner(tmp_path, sections, 15)
    planner.probe("tiny", tmp_path, 1)
    busy = planner.plan("sft", 10)[1]
    unit = busy["stages"]["sft"]["unit_s"]
    assert unit == pytest.approx(3 * make_plan(sections, rates(), 900, 10, ALL_LEFT)["stages"]["sft"]["unit_s"], rel=0.01)

    # SFT's steps took a third of what the busy rates said: more than LOAD_CHANGE× faster; the next plan probes
    # again first (not measured() itself: a resumed run whose later stages are done makes no plan and no probe)
    planner.measured("sft", finished_stage(tmp_path / "sft", 60, [unit] + [unit / 3] * 9))
    assert len(calls) == 1
    quiet = planner.plan("sample", 200)[1]
    assert len(calls) == 2 and calls[1] == ("tiny", 1)
    assert planner.rates.step_s == pytest.approx(rates().step_s)  # every kind of work measured again, decoding too
    assert quiet["stages"]["sample"]["count"] > busy["stages"]["sample"]["count"]
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["reprobes"] == [{"after": "sft", "ratio": pytest.approx(1 / 3, abs=0.01), "probe_s": 0.0}]
    assert saved["probe"]["step_s"] == pytest.approx(rates().step_s)  # a resumed run plans from the new rates

    # sampling 3× faster than its rates: its answers ended early at EOS (the rates assume max_new_tokens), which
    # says nothing about the machine: corrected as before, no probe
    fixed, predicted = budget.stage_seconds("sample", quiet["stages"]["sample"]["count"],
                                            budget.cost_keys(sections)["sample"], planner.rates)
    planner.measured("sample", finished_stage(tmp_path / "sample", fixed + 0.3 * predicted, []),
                     units=quiet["stages"]["sample"]["count"])
    assert len(calls) == 2 and planner.rates.scale["decode"] == pytest.approx(0.3, rel=0.01) and 1 / 0.3 > LOAD_CHANGE

    # a machine that keeps changing: probed again at most MAX_REPROBES times in a run; PPO's speed is no sign
    step = planner.plan("rm", 300)[1]["stages"]["rm"]["unit_s"]
    planner.measured("rm", finished_stage(tmp_path / "rm", 100, [step * 5] * 10))
    planner.plan("ppo", 400)
    assert len(calls) == 1 + MAX_REPROBES == 3
    planner.measured("ppo", finished_stage(tmp_path / "ppo", 100, [0.01] * 5))
    planner.plan("eval", 500)
    assert len(calls) == 3 and len(json.loads((tmp_path / "plan.json").read_text())["reprobes"]) == MAX_REPROBES


def sampled_stage(folder, r: Rates, batches: int, rows: int, steps: int, slow: float = 1.0):
    """A finished sampling stage whose batches each ran ``steps`` token steps, ``slow``× what the rates ``r`` say."""
    from rlhfkit.stages.budget import decode_batch_s

    folder.mkdir(parents=True)
    batch_s = slow * decode_batch_s(r, rows, r.prompt_tokens, steps)
    (folder / ".done.json").write_text(json.dumps({"stage": "sample", "seconds": r.load_s + batches * batch_s}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "time_step_s": batch_s, "rows": rows, "prompt_tokens": r.prompt_tokens,
                    "decode_steps": steps}) + "\n" for i in range(batches)))
    return folder


def test_sampling_far_faster_per_token_step_than_a_busy_probe_said_measures_the_machine_again(tmp_path, monkeypatch):
    """A busy spell met the probe's decoding alone (10× slow; its training pass as on a quiet machine): SFT ran
    at its rates, sampling at a tenth of them per token step. The next plan probes again. Answers that end
    early at EOS, at the rates' speed per step, are no such sign."""
    import dataclasses

    import rlhfkit.stages.budget as budget
    from rlhfkit.stages.budget import Planner

    sections = tutor_sections()
    quiet = rates()
    busy = dataclasses.replace(quiet, prefill_token_s=10 * quiet.prefill_token_s, step_s=10 * quiet.step_s,
                               step_row_s=10 * quiet.step_row_s)
    machine = [busy, quiet]
    calls = []

    def fake_probe(sections_, model, folder, threads=0):
        calls.append(model)
        return machine[len(calls) - 1]

    monkeypatch.setattr(budget, "probe", fake_probe)
    planner = Planner(tmp_path, sections, 15)
    planner.probe("tiny", tmp_path)
    unit = planner.plan("sft", 10)[1]["stages"]["sft"]["unit_s"]
    planner.measured("sft", finished_stage(tmp_path / "sft", 60, [unit] * 10))  # training as the probe said
    n = planner.plan("sample", 100)[1]["stages"]["sample"]["count"]
    rows = sections["sample"]["batch_size"] * sections["sample"]["k"]
    # answers of 40 tokens (max_new_tokens 80), each batch at the quiet machine's speed per step
    planner.measured("sample", sampled_stage(tmp_path / "sample", quiet, n // 8, rows, 40), units=n)
    assert len(calls) == 1
    planner.plan("rm", 300)
    assert len(calls) == 2 and planner.rates.step_s == pytest.approx(quiet.step_s)
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["reprobes"] == [{"after": "sample", "ratio": pytest.approx(0.1, rel=0.01), "probe_s": 0.0}]

    # the same short answers at the rates' own speed per step: ended early, not a faster machine
    calls.clear()
    machine[:] = [quiet]
    other = Planner(tmp_path / "other", sections, 15)
    (tmp_path / "other").mkdir()
    other.probe("tiny", tmp_path)
    other.plan("sample", 100)
    other.measured("sample", sampled_stage(tmp_path / "other" / "sample", quiet, 10, rows, 20), units=80)
    other.plan("rm", 300)
    assert len(calls) == 1 and other.reprobe_due is None


def test_ppo_gets_room_for_updates_when_the_rates_say_none_fit():
    """Rates a busy spell slowed by 10× say no update fits PPO's deadline; max_steps still leaves the deadline,
    not the count, to end PPO on the faster machine it then runs on."""
    from rlhfkit.stages.budget import PPO_MIN_STEPS

    plan = make_plan(tutor_sections(), rates(slow=10.0), 15 * 60, 400, {"ppo": 1, "eval": 1}, n_dev=24)
    assert plan["ppo_fits"] == 0 and plan["stages"]["ppo"]["count"] == PPO_MIN_STEPS
    assert make_plan(tutor_sections(), rates(slow=10.0), 15 * 60, 400, {"ppo": 1, "eval": 1}, n_dev=24,
                     ppo_cap=2)["stages"]["ppo"]["count"] == 2  # an override still caps it


def test_the_probe_decodes_with_the_stages_own_sampler_and_times_training_after_a_warm_up_pass(monkeypatch):
    """Sampling from the whole distribution goes through our loop, where the K rows of a prompt share its pass: the
    probe times that loop, not ``generate``, and times each training pass only after an untimed one of the same batch
    (a first pass pays one-off set-up that a stage pays once)."""
    import rlhfkit.models.rollout as rollout
    from rlhfkit.stages.budget import PROBE_TOKENS, probe

    recipe = load_recipe("tutor")
    sections = {k: {**dict(getattr(recipe, k)), **over} for k, over in {
        "sft": {"batch_size": 4, "max_len": 128}, "sample": {"k": 3, "batch_size": 2, "max_new_tokens": 8},
        "feedback": {}, "rm": {"model": "tiny-minilm"}, "ppo": {"batch_size": 16, "max_new_tokens": 8}, "eval": {}}.items()}
    decoded, passes = [], []
    real_sample, real_forward = rollout.sample, rollout.forward_tokens

    def counting_sample(model, query, query_mask, n, *args, **kwargs):
        decoded.append((query.shape[0], n, len({tuple(r) for r in query.tolist()})))
        return real_sample(model, query, query_mask, n, *args, **kwargs)

    def counting_forward(model, query, *args, **kwargs):
        passes.append(tuple(query.shape))
        return real_forward(model, query, *args, **kwargs)

    monkeypatch.setattr(rollout, "sample", counting_sample)
    monkeypatch.setattr(rollout, "forward_tokens", counting_forward)
    r = probe(sections, "tiny", recipe.folder, 1)
    # the warm-up and the three timed decodes at (rows, 1), (rows, 1 + D), (rows / 8, 1 + D): 2 prompts × k = 3 rows
    # each, every prompt's rows alike (they share its pass)
    assert [(rows, n) for rows, n, _ in decoded] == [(6, 1), (6, 1), (6, 1 + PROBE_TOKENS), (1, 1 + PROBE_TOKENS)]
    assert [distinct for *_, distinct in decoded[:3]] == [2, 2, 2]
    # PPO's pass twice on the same batch (an eighth of its 16 rows): the warm-up, then the timed one
    assert passes == [(2, passes[0][1])] * 2
    assert r.ppo_token_s > 0 and r.train_token_s > 0 and r.rm_token_s > 0 and r.step_s + r.step_row_s > 0
