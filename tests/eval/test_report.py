import json
import math

from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.eval.report import build_report, detect_reward_hacking
from tests.conftest import write_jsonl

IMG = '<img src="data:image/png;base64,'


def win(rate: float) -> dict:
    return {"win_rate": rate, "ci": [rate - 0.1, rate + 0.1], "wins": 3, "ties": 1, "losses": 2, "n": 6,
            "len_model": 30.0, "len_reference": 20.0}


def fake_run(root, gold_after: list[float]):
    """A run folder as the pipeline lays it out, with recorded metrics; PPO checkpoints at rising KL and proxy."""
    write_jsonl(root / "sft" / "metrics.jsonl", [
        {"step": s, "loss": 3.0 / s, "lr": 1e-4, "time_step_s": 0.1, **({"eval_loss": 3.2 / s} if s % 10 == 0 else {})}
        for s in range(1, 41)])
    write_jsonl(root / "rm" / "metrics.jsonl", [
        {"step": s, "loss": 0.7 - s / 100, "accuracy": min(0.5 + s / 60, 1.0), "time_step_s": 0.1,
         **({"eval_accuracy": 0.5 + s / 80} if s % 10 == 0 else {})} for s in range(1, 31)])
    write_jsonl(root / "ppo" / "metrics.jsonl", [
        {"step": s, "score": s / 50, "kl": s / 10, "beta": 0.05, "non_score_reward": -s / 200, "entropy": 2 - s / 100,
         "approx_kl": 0.01, "clipfrac": 0.1, "policy_loss": 0.0, "value_loss": 1 / s, "explained_variance": 0.5,
         "ratio_mean": 1.0, "response_len": 30, "no_eos_frac": 0.0, "time_rollout_s": 1, "time_train_s": 1,
         "time_step_s": 2} for s in range(1, 51)])
    models = [{"name": "sft", "spec": "runs/x/sft", "is_reference": True, "n": 6, "rm_score": 0.0, "gold_score": 0.30,
               "kl": 0.0, "kl_method": "sampled", "win_rate_rm": win(0.5), "win_rate_gold": win(0.5), "bleu": 10.0,
               "rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.25, "ppl": 12.0, "eval_loss": 2.5, "response_len": 20.0,
               "response_words": 15.0, "distinct_1": 0.5, "distinct_2": 0.7, "no_eos_frac": 0.0}]
    for i, gold in enumerate(gold_after, 1):
        models.append({**models[0], "name": f"ppo-{i}", "is_reference": False, "rm_score": 0.5 * i, "gold_score": gold,
                       "kl": 2.0 * i, "win_rate_rm": win(0.8), "win_rate_gold": win(0.6)})
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "eval.json").write_text(json.dumps({
        "prompts": "eval.jsonl", "n_prompts": 6, "reference": "runs/x/sft", "judge": "tutor", "temperature": 0.7,
        "skipped": {}, "models": models}))
    write_jsonl(root / "eval" / "samples.jsonl", [
        {"index": j, "prompt": f"Explain <thing> {j}", "model": m["name"], "response": f"answer of {m['name']} to {j}",
         "tokens": 5, "ended": True, "rm_score": 0.1, "gold_score": 0.2} for m in models for j in range(3)])
    return root


def test_report_embeds_every_plot_and_says_reward_hacking_when_proxy_rises_while_gold_falls(tmp_path):
    run = fake_run(tmp_path / "run", gold_after=[0.6, 0.5, 0.2])
    html = build_report(run).read_text()
    assert (run / "report.html").exists()
    # SFT, reward model, PPO grid, frontier, over-optimisation.
    assert html.count(IMG) == 5
    assert 'id="reward-hacking"' in html and "Reward hacking" in html
    assert "answer of sft to 0" in html and "answer of ppo-3 to 0" in html  # before / after, same prompt
    assert "Explain &lt;thing&gt; 0" in html  # text is escaped
    assert "win vs ref (gold)" in html and "BLEU" in html


def test_report_says_when_the_eval_answers_were_decoded_greedily(tmp_path):
    run = fake_run(tmp_path / "run", gold_after=[0.4])
    assert "answers sampled at temperature 0.7" in build_report(run).read_text()
    ev = json.loads((run / "eval" / "eval.json").read_text())
    (run / "eval" / "eval.json").write_text(json.dumps({**ev, "temperature": 0.0}))
    html = build_report(run).read_text()
    assert "answers decoded greedily (their KL is biased" in html and "sampled at temperature" not in html


def test_report_has_no_reward_hacking_sentence_when_gold_keeps_rising(tmp_path):
    html = build_report(fake_run(tmp_path / "run", gold_after=[0.4, 0.5, 0.6])).read_text()
    assert html.count(IMG) == 5
    assert 'id="reward-hacking"' not in html and "No over-optimisation seen" in html
    assert "the gold score rises with the KL (0.300 → 0.600" in html


def test_report_says_there_was_no_gain_when_proxy_and_gold_both_end_lower():
    from rlhfkit.eval.report import reward_hacking_verdict

    text = reward_hacking_verdict(None, [(0.0, 1.6, 0.50), (0.4, 1.5, 0.48)])
    assert "no gain either" in text and "1.600 → 1.500" in text and "0.500 → 0.480" in text
    assert 'id="reward-hacking"' not in text


def test_report_of_a_run_with_only_sft_names_what_is_missing(tmp_path):
    run = fake_run(tmp_path / "full", [0.5])
    part = tmp_path / "part"
    (part / "sft").mkdir(parents=True)
    (part / "sft" / "metrics.jsonl").write_text((run / "sft" / "metrics.jsonl").read_text())
    out = CliRunner().invoke(app, ["report", str(part), "--output", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    html = (tmp_path / "r.html").read_text()
    assert html.count(IMG) == 1
    assert "Missing parts" in html and "no ppo/metrics.jsonl" in html and "no eval/eval.json" in html


def test_reward_hacking_needs_a_gold_drop_after_its_peak_with_the_proxy_still_rising():
    assert detect_reward_hacking([(0, 0.0, 0.3), (1, 0.5, 0.6), (2, 1.0, 0.2)])["gold_peak"] == 0.6
    assert detect_reward_hacking([(0, 0.0, 0.3), (1, 0.5, 0.6), (2, 0.4, 0.2)]) is None  # proxy fell too
    assert detect_reward_hacking([(0, 0.0, 0.3), (1, 0.5, 0.6), (2, 1.0, 0.7)]) is None  # gold still rising
    # A drop that is small against the curve's range is noise, not hacking.
    assert detect_reward_hacking([(0, 0.0, 0.0), (1, 0.5, 1.0), (2, 1.0, 0.99)]) is None
    assert math.isclose(detect_reward_hacking([(0, 0, 1.0), (4, 1, 0.5)])["last_kl"], 4)


def test_without_snapshots_or_evaluated_checkpoints_the_curve_comes_from_the_held_out_evaluations_in_ppo_s_log():
    from rlhfkit.eval.report import overoptimisation_points

    held = lambda s: {"eval/rm_score": s / 40, "eval/gold_score": 0.5 - s / 100, "eval/kl": s / 20}
    log = [{"step": s, "kl": s / 10, "score": s / 50, **(held(s) if s % 5 == 0 else {})} for s in range(1, 21)]
    points, source = overoptimisation_points(log, None, None)
    assert source == "the held-out evaluations in the training log"
    # at the held-out KL of each evaluation, not the training batch's
    assert points == [(0.25, 5 / 40, 0.45), (0.5, 10 / 40, 0.4), (0.75, 15 / 40, 0.35), (1.0, 20 / 40, 0.3)]


def with_snapshots(run, proxy: list[float], gold: list[float], every: int = 2):
    """``ppo/snapshots.json`` as PPO writes it: a held-out evaluation every ``every`` updates from step 0, KL rising
    0.1 a snapshot, chosen by the highest proxy score."""
    rows = [{"step": i * every, "path": f"snapshots/step-{i * every:04d}" if i else None, "rm_score": p, "gold_score": g,
             "kl": 0.1 * i, "grading_accuracy": 0.2 + 0.01 * i} for i, (p, g) in enumerate(zip(proxy, gold))]
    chosen = rows[proxy.index(max(proxy))]["step"]
    (run / "ppo" / "snapshots.json").write_text(json.dumps({"chosen": chosen, "snapshots": rows}))
    return rows, chosen


def test_the_report_draws_every_snapshot_marks_the_one_the_proxy_chose_and_says_gold_rose_with_it(tmp_path):
    from rlhfkit.eval.report import SNAPSHOTS, overoptimisation_points
    from rlhfkit.tracking import read_metrics, read_snapshots

    run = fake_run(tmp_path / "run", gold_after=[0.6, 0.5, 0.2])  # four evaluated checkpoints, whose gold falls
    rows, chosen = with_snapshots(run, proxy=[0.40, 0.45, 0.50, 0.52, 0.60, 0.55], gold=[0.30, 0.31, 0.33, 0.34, 0.36, 0.35])
    assert chosen == 8
    ev = json.loads((run / "eval" / "eval.json").read_text())
    points, source = overoptimisation_points(read_metrics(run / "ppo" / "metrics.jsonl"), ev, read_snapshots(run / "ppo"))
    # every snapshot, at its held-out KL — not the four checkpoints of eval.json
    assert source == SNAPSHOTS and points == [(r["kl"], r["rm_score"], r["gold_score"]) for r in rows]
    html = build_report(run).read_text()
    assert html.count(IMG) == 5
    assert 'alt="gold and proxy against KL: 6 points (PPO snapshots, held-out prompts); chosen by proxy: step 8"' in html
    # the table: a row per snapshot, one of them chosen
    assert html.count("<tr class=snapshot>") == 5 and html.count("<tr class=chosen><td>8</td>") == 1
    assert "<td>the start (the reference)</td>" in html and "<code>snapshots/step-0010</code>" in html
    assert "<b>Gold rose with proxy:</b> +0.060 at the chosen step 8 (KL 0.40) against the start" in html
    assert "rank correlation of proxy and gold over the 6 snapshots +1.00" in html
    assert 'id="reward-hacking"' not in html  # the checkpoints' falling gold is not what the figure shows


def test_the_report_says_when_proxy_rose_while_gold_fell_after_a_snapshot(tmp_path):
    run = fake_run(tmp_path / "run", gold_after=[0.4, 0.5, 0.6])
    _, chosen = with_snapshots(run, proxy=[0.40, 0.45, 0.50, 0.55, 0.60, 0.65], gold=[0.30, 0.33, 0.36, 0.32, 0.28, 0.25])
    html = build_report(run).read_text()
    assert chosen == 10 and "chosen by proxy: step 10" in html
    assert 'id="reward-hacking"' in html
    assert "Proxy rose while gold fell after step 4: over-optimisation." in html
    assert "the proxy went 0.500 → 0.650 and the gold score 0.360 → 0.250" in html
    assert "The snapshot the proxy chose, step 10 (KL 0.50), is -0.050 in gold against the start" in html


def test_the_snapshot_sentence_names_a_proxy_gain_that_gold_did_not_share_and_a_start_nothing_beat():
    from rlhfkit.eval.report import snapshots_verdict

    def snaps(proxy, gold):
        rows = [{"step": i, "path": None, "rm_score": p, "gold_score": g, "kl": 0.1 * i}
                for i, (p, g) in enumerate(zip(proxy, gold))]
        return {"chosen": rows[proxy.index(max(proxy))]["step"], "snapshots": rows}

    text = snapshots_verdict(snaps([0.1, 0.3, 0.05], [0.5, 0.4, 0.45]))  # the proxy's gain did not last: no hacking curve
    assert 'id="reward-hacking"' not in text
    assert "Gold did not follow proxy:" in text and "step 1 (KL 0.10), +0.200 in proxy" in text and "is -0.100" in text
    assert "rank correlation of proxy and gold over the 3 snapshots -0.50" in text
    text = snapshots_verdict(snaps([0.5, 0.3, 0.4], [0.5, 0.5, 0.5]))
    assert "No update beat the start on the held-out proxy" in text and "one of the scores never changed" in text


def test_a_gold_change_within_two_standard_errors_is_called_noise_not_over_optimisation_or_a_gain():
    from rlhfkit.eval.report import snapshots_verdict

    def snaps(proxy, gold, se):
        rows = [{"step": 2 * i, "path": None, "rm_score": p, "gold_score": g, "gold_se": se, "kl": 0.1 * i}
                for i, (p, g) in enumerate(zip(proxy, gold))]
        return {"chosen": rows[proxy.index(max(proxy))]["step"], "snapshots": rows}

    # a demo's 24 dev prompts: gold 0.682 → 0.650 → 0.663 while the proxy rises, each mean ±0.03
    proxy, gold = [-0.40, -0.32, -0.21], [0.682, 0.650, 0.663]
    noisy = snapshots_verdict(snaps(proxy, gold, se=0.03))
    assert 'id="reward-hacking"' not in noisy and "Gold moved within its noise:" in noisy
    assert "(±0.085)" in noisy  # 2 · √(0.03² + 0.03²)
    # the same curve measured ten times more precisely is over-optimisation
    sharp = snapshots_verdict(snaps(proxy, gold, se=0.003))
    assert 'id="reward-hacking"' in sharp and "Proxy rose while gold fell after step 0" in sharp
    # a gain smaller than its noise is not called a gain
    small = snapshots_verdict(snaps([0.1, 0.3], [0.50, 0.52], se=0.02))
    assert "Gold did not move beyond its noise:" in small and "+0.020 at the chosen step 2" in small
    assert "Gold rose with proxy:" in snapshots_verdict(snaps([0.1, 0.3], [0.50, 0.60], se=0.02))


def test_a_transcription_run_shows_wer_from_the_recogniser_to_the_policy_and_word_level_diffs(tmp_path):
    from rlhfkit.eval import metrics as M
    from rlhfkit.eval.report import word_diff

    said = ["my phone number is four five two", "pay the bill today"]
    one_best = ["my phone number is for five to", "pay the bills to day"]
    answers = {"sft": ["my phone number is four five to", "pay the bill to day"],
               "ppo": ["my phone number is four five two", "pay the bill today"]}
    records = [{"prompt": f"p{i}", "reference": r, "one_best": b, "nbest": [{"text": b}]}
               for i, (r, b) in enumerate(zip(said, one_best))]
    rows = [{"name": name, "is_reference": name == "sft", "transcription": M.transcription(texts, records, n_boot=50),
             "gold_score": 0.5} for name, texts in answers.items()]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({
        "prompts": "eval.jsonl", "n_prompts": 2, "judge": "asr", "models": rows,
        "recogniser": {"one_best": M.transcription(one_best, records, n_boot=50),
                       "oracle_nbest": M.transcription(one_best, records, n_boot=50)}}))
    write_jsonl(tmp_path / "eval" / "samples.jsonl", [
        {"index": i, "sample": 0, "prompt": r["prompt"], "model": name, "response": texts[i], "reference": r["reference"],
         "one_best": r["one_best"]} for name, texts in answers.items() for i, r in enumerate(records)])
    page = build_report(tmp_path).read_text()
    assert "Speech recognition: word error rate" in page
    assert "word error rate: 0.455" in page and "→ 0.000 [0.000, 0.000] (ppo)" in page  # 5 edits of 11 words → none
    assert "<del>four</del> <ins>for</ins>" in page  # the recogniser's miss, shown in its place
    assert word_diff("pay the bill today", "pay the bills to day") == "pay the <del>bill today</del> <ins>bills to day</ins>"
    assert word_diff("a b c", "a c d") == "a <del>b</del> c <ins>d</ins>"
