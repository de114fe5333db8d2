import json

import pytest
import yaml

import rlhfkit.stages.sft as sft
from rlhfkit.config import ConfigError, PipelineConfig
from rlhfkit.stages.budget import STAGE_SLACK
from rlhfkit.stages.pipeline import ALGOS, available_recipes, load_recipe, policy_algos, ppo_minutes, run_pipeline
from rlhfkit.tracking import read_metrics

TINY = {
    "sft": {"max_steps": 4, "batch_size": 4, "save_every": 2, "max_len": 128},
    "sample": {"limit": 6, "k": 3, "max_new_tokens": 8},
    "rm": {"model": "tiny-minilm", "max_steps": 3, "eval_every": 0, "save_every": 0, "eval_fraction": 0.34},
    "ppo": {"max_steps": 2, "batch_size": 4, "max_new_tokens": 8, "save_every": 1, "eval_every": 1},
    "eval": {"max_prompts": 4, "max_new_tokens": 8, "bootstrap": 50},
}


def test_every_shipped_recipe_loads_with_its_data_and_judge():
    from rlhfkit.judges import get_judge

    assert {"tutor", "sentiment", "writer", "support"} <= set(available_recipes())
    for name in available_recipes():
        recipe = load_recipe(name)
        assert callable(get_judge(recipe.judge))


def test_ppo_gets_the_rest_of_the_budget_less_the_eval_reserve_split_over_the_rounds_left():
    assert ppo_minutes(15, 6, 2, 1) == 7
    assert ppo_minutes(15, 5, 2, 2) == 4  # two rounds left: this round's PPO takes half
    assert ppo_minutes(15, 20, 2, 1) == 1  # over budget already: one update still runs and is saved


def test_unknown_stage_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match="overrides: ppx: unknown stage"):
        run_pipeline(PipelineConfig(recipe="tutor", output=str(tmp_path / "unused"), overrides={"ppx": {}}))


def test_the_policy_optimisation_is_the_commands_then_an_overrides_then_the_recipes_then_ppo():
    from dataclasses import replace

    recipe = load_recipe("tutor")
    assert policy_algos(PipelineConfig(), recipe) == ["ppo"]  # the tutor recipe names none
    assert policy_algos(PipelineConfig(), replace(recipe, ppo={**recipe.ppo, "algo": "rloo"})) == ["rloo"]
    assert policy_algos(PipelineConfig(), replace(recipe, algo="dpo", ppo={"algo": "rloo"})) == ["dpo"]
    assert policy_algos(PipelineConfig(overrides={"ppo": {"algo": "grpo"}}), replace(recipe, algo="dpo")) == ["grpo"]
    assert policy_algos(PipelineConfig(algo="reinforce++", overrides={"ppo": {"algo": "grpo"}}), recipe) == ["reinforce++"]
    assert set(ALGOS) == {"ppo", "grpo", "rloo", "reinforce++", "dpo"}
    with pytest.raises(ConfigError, match="algo: expected one of ppo, grpo, rloo, reinforce\\+\\+, dpo .*got 'ddpg'"):
        policy_algos(PipelineConfig(algo="ddpg"), recipe)


def test_several_algorithms_are_a_list_or_comma_separated_each_once_and_one_round_only():
    from dataclasses import replace

    recipe = load_recipe("tutor")
    assert policy_algos(PipelineConfig(algo="grpo, dpo"), recipe) == ["grpo", "dpo"]
    assert policy_algos(PipelineConfig(), replace(recipe, algo=["rloo", "ppo"])) == ["rloo", "ppo"]
    with pytest.raises(ConfigError, match="one or more different algorithms"):
        policy_algos(PipelineConfig(algo="dpo,dpo"), recipe)
    with pytest.raises(ConfigError, match="several algorithms are compared on one round's feedback; rounds 2"):
        policy_algos(PipelineConfig(algo="ppo,dpo", rounds=2), recipe)


def test_a_recipe_that_names_an_unknown_algo_is_refused_with_its_file(tmp_path):
    import shutil

    folder = tmp_path / "mine"
    shutil.copytree(load_recipe("tutor").folder, folder)
    text = (folder / "recipe.yaml").read_text()
    (folder / "recipe.yaml").write_text("algo: ddpg\n" + text)
    with pytest.raises(ConfigError, match=f"{folder / 'recipe.yaml'}: algo: expected one of"):
        load_recipe(str(folder))


def test_a_rerun_continues_the_budget_instead_of_starting_it_again(tmp_path, monkeypatch):
    import rlhfkit.stages.pipeline as pipeline

    now = {"t": 1000.0}
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: now["t"])
    first = pipeline.BudgetClock(tmp_path)
    now["t"] += 300  # five minutes into the run, a stage ends (or is interrupted)
    first.save()
    now["t"] += 3600  # an hour later, the rerun
    rerun = pipeline.BudgetClock(tmp_path)
    now["t"] += 60
    assert rerun.seconds() == pytest.approx(360)


@pytest.mark.slow
def test_pipeline_end_to_end_on_the_tiny_model_resumes_an_interrupted_stage(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    cfg = PipelineConfig(recipe="tutor", output=str(out), model="tiny", overrides=TINY, threads=1)

    # Ctrl-C during SFT step 3: the checkpoint of step 2 stays; the rerun resumes SFT, then runs the rest.
    calls = {"n": 0}
    real = sft.response_loss

    def interrupt(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(sft, "response_loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    monkeypatch.setattr(sft, "response_loss", real)
    assert not (out / "sft" / ".done.json").exists()
    spent = json.loads((out / "budget_clock.json").read_text())["spent_s"]
    assert spent > 0  # the interrupted run's time counts against the budget of the rerun

    # The tiny reward model's scores of the tiny policy are noise; a held-out proxy that peaks at step 1 of 2 makes
    # the choice visible: the final eval must take snapshot 1, not the final policy.
    import rlhfkit.stages.ppo as trainer

    real_evaluate, proxy = trainer.evaluate, iter([0.0, 1.0, 0.5])
    monkeypatch.setattr(trainer, "evaluate", lambda *args: {**real_evaluate(*args), "eval/rm_score": next(proxy)})
    result = run_pipeline(cfg)
    assert json.loads((out / "budget_clock.json").read_text())["spent_s"] > spent
    assert [r["step"] for r in read_metrics(out / "sft" / "metrics.jsonl")] == [1, 2, 3, 4]
    for stage in ("sft", "sample", "feedback", "rm", "ppo", "eval"):
        assert (out / stage / ".done.json").exists(), stage
    cands = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 6 and all(len(c["responses"]) == 3 for c in cands)
    assert (out / "feedback.jsonl").stat().st_size > 0
    # the reward model is checked against the gold judge on its 2 held-out prompts' candidates (the tiny
    # model's word salad scores 0 with the tutor judge: no pair to count, and the check says so)
    gold = json.loads((out / "rm" / "gold_check.json").read_text())
    assert gold["judge"] == "tutor" and gold["held_out_prompts"] == 2
    assert (gold["gold_pairs"], gold["gold_accuracy"]) == (0, None)
    assert [r["step"] for r in read_metrics(out / "ppo" / "metrics.jsonl")] == [0, 1, 2]  # 0: the held-out start
    # PPO ran under the budget's deadline: the recipe's minutes less the time so far and eval's measured reserve
    ppo_budget = yaml.safe_load((out / "ppo" / "config.yaml").read_text())["time_budget_minutes"]
    assert 0.0 < ppo_budget < load_recipe("tutor").budget_minutes
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert [m["name"] for m in ev["models"]][:2] == ["sft", "ppo"]
    # the recipe's dev prompts: never sampled for feedback, never a PPO prompt; PPO's held-out evaluations
    n_dev = load_recipe("tutor").dev_prompts
    dev = [json.loads(x)["prompt"] for x in (out / "dev_prompts.jsonl").read_text().splitlines()]
    train = [json.loads(x)["prompt"] for x in (out / "prompts_train.jsonl").read_text().splitlines()]
    assert len(dev) == n_dev > 0 and len(train) == 496 - n_dev and not set(dev) & set(train)
    assert not set(dev) & {c["prompt"] for c in cands}
    ppo_cfg = yaml.safe_load((out / "ppo" / "config.yaml").read_text())
    assert (ppo_cfg["eval_prompts"], ppo_cfg["eval_judge"], ppo_cfg["prompts"]) == (str(out / "dev_prompts.jsonl"), "tutor",
                                                                                     str(out / "prompts_train.jsonl"))
    snaps = json.loads((out / "ppo" / "snapshots.json").read_text())
    rows = snaps["snapshots"]
    assert [r["step"] for r in rows] == [0, 1, 2]  # TINY evaluates after every update
    assert all(r["gold_score"] is not None and r["grading_accuracy"] is not None for r in rows)  # tutor: grading prompts
    # the final eval's ppo is the snapshot the held-out proxy chose
    assert snaps["chosen"] == 1 and rows[1]["path"] == "snapshots/step-0001"
    assert ev["models"][1]["spec"] == str(out / "ppo" / "snapshots" / "step-0001")
    assert "PPO snapshot step 1 of 2 is evaluated as ppo" in capsys.readouterr().err.replace("\n", " ")
    # perplexity on the 9 SFT examples (5 % of 178) that SFT held out
    assert len((out / "sft_heldout.jsonl").read_text().splitlines()) == 9
    assert all(m["ppl"] > 1 for m in ev["models"]) and "ppl" not in ev["skipped"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert "Reward model against the gold judge" in html
    assert html.count("<tr class=snapshot>") + html.count("<tr class=chosen>") == 3
    assert result["report"] == str(out / "report.html")

    # A finished run is skipped stage by stage: nothing trains again.
    monkeypatch.setattr(sft, "train_sft", lambda cfg: pytest.fail("sft ran again"))
    run_pipeline(cfg)
    assert "skipped" in capsys.readouterr().err


def test_the_reward_model_gold_check_counts_held_out_pairs_the_gold_judge_orders(tmp_path, monkeypatch):
    import torch

    import rlhfkit.stages.reward_model as reward
    from rlhfkit.stages.pipeline import rm_gold_check

    cands = tmp_path / "candidates.jsonl"
    rows = [{"prompt": f"p{i}", "responses": ["a", "a b", "a b c"]} for i in range(3)]
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "split.json").write_text(json.dumps({"eval_prompts": [{"prompt": "p0"}, {"prompt": "p2"}]}))

    class ByLength:  # agrees with the length judge on every pair; `sign` -1 disagrees on every pair
        sign = 1.0

        def score(self, prompts, responses, batch_size):
            return torch.tensor([self.sign * len(r) for r in responses], dtype=torch.float32)

    monkeypatch.setattr(reward.RewardScorer, "load", staticmethod(lambda path: ByLength()))
    res = rm_gold_check(rm, cands, "length")
    assert res == {"judge": "length", "held_out_prompts": 2, "gold_pairs": 6, "gold_accuracy": 1.0}
    assert json.loads((rm / "gold_check.json").read_text()) == res
    (rm / "gold_check.json").unlink()
    ByLength.sign = -1.0
    assert rm_gold_check(rm, cands, "length")["gold_accuracy"] == 0.0


def test_the_dev_prompts_are_a_seeded_split_written_once_and_reused(tmp_path):
    from dataclasses import replace

    from rlhfkit.stages.pipeline import dev_split

    recipe = replace(load_recipe("tutor"), dev_prompts=5)
    train, dev = dev_split(recipe, tmp_path / "a", seed=3)
    held = dev.read_text().splitlines()
    kept = train.read_text().splitlines()
    every = (recipe.folder / "prompts.jsonl").read_text().splitlines()
    assert len(held) == 5 and len(kept) == len(every) - 5 and sorted(held + kept) == sorted(every)
    assert dev_split(recipe, tmp_path / "b", seed=3)[1].read_text().splitlines() == held  # seeded
    assert dev_split(recipe, tmp_path / "c", seed=4)[1].read_text().splitlines() != held
    # a rerun reuses the run folder's split, whatever the recipe says now
    assert dev_split(replace(recipe, dev_prompts=9), tmp_path / "a", seed=0)[1].read_text().splitlines() == held
    assert dev_split(replace(recipe, dev_prompts=0), tmp_path / "d", seed=3) == (recipe.folder / "prompts.jsonl", None)
    with pytest.raises(ConfigError, match="dev_prompts: 10000 of the"):
        dev_split(replace(recipe, dev_prompts=10_000), tmp_path / "e", seed=3)


def test_the_final_eval_takes_the_snapshot_the_held_out_proxy_chose_else_the_final_policy(tmp_path, capsys):
    from rlhfkit.stages.pipeline import chosen_policy

    ppo = tmp_path / "ppo"
    ppo.mkdir()
    assert chosen_policy(ppo) == str(ppo)  # no snapshots.json: no dev prompts

    def snapshots(chosen: int, kept: bool = True):
        rows = [{"step": s, "path": f"snapshots/step-{s:04d}" if s and kept else None, "rm_score": rm, "gold_score": 1 - rm,
                 "kl": s / 10, "grading_accuracy": None} for s, rm in ((0, 0.2), (2, 0.5), (4, 0.3))]
        (ppo / "snapshots.json").write_text(json.dumps({"chosen": chosen, "snapshots": rows}))

    snapshots(chosen=2)
    assert chosen_policy(ppo) == str(ppo / "snapshots" / "step-0002")
    assert "snapshot step 2 of 4 is evaluated as ppo" in capsys.readouterr().err.replace("\n", " ")
    snapshots(chosen=0)
    assert chosen_policy(ppo) == str(ppo)
    assert "no PPO update beat the start" in capsys.readouterr().err.replace("\n", " ")
    snapshots(chosen=2, kept=False)
    assert chosen_policy(ppo) == str(ppo)
    assert "weights were not kept" in capsys.readouterr().err.replace("\n", " ")


@pytest.mark.slow
def test_pipeline_with_algo_dpo_trains_dpo_on_the_feedback_in_ppos_place_and_evaluates_it(tmp_path):
    out = tmp_path / "run"
    tiny = {**TINY, "dpo": {"max_steps": 2, "batch_size": 4, "max_len": 128, "eval_every": 0, "save_every": 1}}
    result = run_pipeline(PipelineConfig(recipe="tutor", output=str(out), model="tiny", algo="dpo", overrides=tiny, threads=1))
    assert (out / "dpo" / ".done.json").exists() and not (out / "ppo").exists()
    dpo_cfg = yaml.safe_load((out / "dpo" / "config.yaml").read_text())
    assert dpo_cfg["data"] == str(out / "feedback_all.jsonl") and dpo_cfg["model"] == str(out / "sft" / "merged")
    # PPO's slot of the budget is DPO's deadline
    assert 0.0 < dpo_cfg["time_budget_minutes"] < load_recipe("tutor").budget_minutes
    rows = read_metrics(out / "dpo" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    # the dev prompts are answered at the start and at the end, as PPO answers them: the report's gold-vs-proxy points
    assert [r["step"] for r in rows if "eval/gold_score" in r] == [0, 2]
    # eval is planned with DPO done: no PPO left to keep budget for
    last_plan = json.loads((out / "plan.json").read_text())["plans"][-1]
    assert last_plan["at"] == "eval/1" and "ppo" not in last_plan["stages"]
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert [m["name"] for m in ev["models"]][:2] == ["sft", "dpo"]
    assert ev["models"][1]["spec"] == str(out / "dpo" / "merged")
    html = (out / "report.html").read_text()
    assert "<h2>DPO training</h2>" in html and "PPO training" not in html and "DPO curves not shown" not in html
    assert result["report"] == str(out / "report.html")


@pytest.mark.slow
def test_pipeline_with_a_critic_free_algo_trains_without_a_value_model_and_reports_it_by_name(tmp_path, monkeypatch):
    import rlhfkit.stages.sample as sample

    out = tmp_path / "run"
    tiny = {**TINY, "ppo": {**TINY["ppo"], "samples_per_prompt": 2}}
    real, deadlines = sample.sample_candidates, []
    monkeypatch.setattr(sample, "sample_candidates", lambda c: deadlines.append(c.time_budget_minutes) or real(c))
    result = run_pipeline(PipelineConfig(recipe="tutor", output=str(out), model="tiny", algo="grpo", overrides=tiny, threads=1))
    # sampling's deadline: STAGE_SLACK × the seconds its plan predicted
    planned = next(p for p in json.loads((out / "plan.json").read_text())["plans"] if p["at"] == "sample/1")
    assert deadlines == [pytest.approx(STAGE_SLACK * planned["stages"]["sample"]["predicted_s"] / 60)]
    assert yaml.safe_load((out / "ppo" / "config.yaml").read_text())["algo"] == "grpo"
    assert not (out / "ppo" / "value").exists()  # critic-free: no value model is built or saved
    rows = [r for r in read_metrics(out / "ppo" / "metrics.jsonl") if "kl_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]  # GRPO's KL sits in its loss, logged every update
    html = (out / "report.html").read_text()
    assert "<h2>GRPO training</h2>" in html and "<h2>PPO training</h2>" not in html
    assert result["report"] == str(out / "report.html")


@pytest.mark.slow
def test_pipeline_with_several_algorithms_trains_each_from_the_same_feedback_in_a_share_of_the_slot_and_compares_them(tmp_path):
    out = tmp_path / "run"
    tiny = {**TINY, "ppo": {**TINY["ppo"], "samples_per_prompt": 2},
            "dpo": {"max_steps": 2, "batch_size": 4, "max_len": 128, "eval_every": 0, "save_every": 1}}
    result = run_pipeline(PipelineConfig(recipe="tutor", output=str(out), model="tiny", algo="grpo,dpo", overrides=tiny,
                                         threads=1))
    assert (out / "grpo" / ".done.json").exists() and (out / "dpo" / ".done.json").exists() and not (out / "ppo").exists()
    grpo_cfg = yaml.safe_load((out / "grpo" / "config.yaml").read_text())
    dpo_cfg = yaml.safe_load((out / "dpo" / "config.yaml").read_text())
    # both start from the SFT model and learn from the same round's reward model and feedback
    assert grpo_cfg["algo"] == "grpo" and grpo_cfg["policy"] == dpo_cfg["model"] == str(out / "sft" / "merged")
    assert grpo_cfg["reward"] == str(out / "rm") and dpo_cfg["data"] == str(out / "feedback_all.jsonl")
    # the slot is shared: the first plan keeps room for two policy optimisations, the second for one
    plans = [p for p in json.loads((out / "plan.json").read_text())["plans"] if p["at"] == "ppo/1"]
    assert [p["stages"]["ppo"]["runs"] for p in plans] == [2, 1]
    assert 0.0 < grpo_cfg["time_budget_minutes"] and 0.0 < dpo_cfg["time_budget_minutes"]
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert [m["name"] for m in ev["models"]][:3] == ["sft", "grpo", "dpo"]
    assert ev["models"][2]["spec"] == str(out / "dpo" / "merged")
    html = (out / "report.html").read_text()
    assert "<h2>GRPO training</h2>" in html and "<h2>DPO training</h2>" in html and "<h2>PPO training</h2>" not in html
    assert "KL: the frontier and over-optimisation (GRPO)" in html and "KL: the frontier and over-optimisation (DPO)" in html
    gold_line = next(line for line in result["summary"] if line.startswith("gold score"))
    assert "(grpo)" in gold_line and "(dpo)" in gold_line
