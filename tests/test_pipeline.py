import json

import pytest
import yaml

import rlhfkit.sft as sft
from rlhfkit.config import ConfigError
from rlhfkit.pipeline import PipelineConfig, available_recipes, load_recipe, ppo_minutes, run_pipeline, scale_counts
from rlhfkit.tracking import read_metrics

TINY = {
    "sft": {"max_steps": 4, "batch_size": 4, "save_every": 2, "max_len": 128},
    "sample": {"limit": 6, "k": 3, "max_new_tokens": 8},
    "rm": {"model": "tiny-minilm", "max_steps": 3, "eval_every": 0, "save_every": 0, "eval_fraction": 0.34},
    "ppo": {"max_steps": 2, "batch_size": 4, "max_new_tokens": 8, "save_every": 1},
    "eval": {"max_prompts": 4, "max_new_tokens": 8, "bootstrap": 50},
}


def test_every_shipped_recipe_loads_with_its_data_and_judge():
    from rlhfkit.judges import get_judge

    assert {"tutor", "sentiment", "writer", "support"} <= set(available_recipes())
    for name in available_recipes():
        recipe = load_recipe(name)
        assert callable(get_judge(recipe.judge))


def test_budget_scales_counts_and_never_to_zero():
    assert scale_counts({"max_steps": 30, "lr": 0.1}, ["max_steps"], 0.5) == {"max_steps": 15, "lr": 0.1}
    assert scale_counts({"max_steps": 3}, ["max_steps"], 0.01) == {"max_steps": 1}


def test_ppo_gets_the_rest_of_the_budget_less_the_eval_reserve_split_over_the_rounds_left():
    assert ppo_minutes(15, 6, 2, 1) == 7
    assert ppo_minutes(15, 5, 2, 2) == 4  # two rounds left: this round's PPO takes half
    assert ppo_minutes(15, 20, 2, 1) == 1  # over budget already: one update still runs and is saved


def test_unknown_stage_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match="overrides: ppx: unknown stage"):
        run_pipeline(PipelineConfig(recipe="tutor", output=str(tmp_path / "unused"), overrides={"ppx": {}}))


def test_a_rerun_continues_the_budget_instead_of_starting_it_again(tmp_path, monkeypatch):
    import rlhfkit.pipeline as pipeline

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
    assert len(read_metrics(out / "ppo" / "metrics.jsonl")) == 2
    # PPO ran under the budget's deadline: the recipe's 15 minutes less the time so far and the eval reserve
    ppo_budget = yaml.safe_load((out / "ppo" / "config.yaml").read_text())["time_budget_minutes"]
    assert 1.0 <= ppo_budget < load_recipe("tutor").budget_minutes - 2.0
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert [m["name"] for m in ev["models"]][:2] == ["sft", "ppo"]
    # perplexity on the 7 SFT examples (5 % of 140) that SFT held out
    assert len((out / "sft_heldout.jsonl").read_text().splitlines()) == 7
    assert all(m["ppl"] > 1 for m in ev["models"]) and "ppl" not in ev["skipped"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert "Reward model against the gold judge" in html
    assert result["report"] == str(out / "report.html")

    # A finished run is skipped stage by stage: nothing trains again.
    monkeypatch.setattr(sft, "train_sft", lambda cfg: pytest.fail("sft ran again"))
    run_pipeline(cfg)
    assert "skipped" in capsys.readouterr().err


def test_the_reward_model_gold_check_counts_held_out_pairs_the_gold_judge_orders(tmp_path, monkeypatch):
    import torch

    import rlhfkit.reward as reward
    from rlhfkit.pipeline import rm_gold_check

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
