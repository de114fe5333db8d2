import pytest

from rlhfkit.rl.health import HealthMonitor


def healthy(step: int, **over) -> dict:
    m = {"score": 0.1 * step, "kl": 0.5 + 0.1 * step, "entropy": 2.0, "response_len": 30.0, "no_eos_frac": 0.1,
         "ratio_max": 1.3, "ratio_mean": 1.0, "value_loss": 0.5, "distinct_responses": 1.0, "batch_size": 8,
         "policy_loss": -0.01, "approx_kl": 0.002}
    m.update(over)
    return m


def run(stream: list[dict]) -> list[list[str]]:
    monitor = HealthMonitor(max_new_tokens=53)
    return [monitor.check(step, m)[0] for step, m in enumerate(stream, start=1)]


def codes(warnings: list[list[str]]) -> set[str]:
    return {w.split(":", 1)[0] for ws in warnings for w in ws}


def test_a_healthy_run_raises_no_warning():
    assert codes(run([healthy(s) for s in range(40)])) == set()


@pytest.mark.parametrize("code, bad", [
    ("kl_negative", {"kl": -2.0}),
    ("kl_explode", {"kl": 80.0}),
    ("entropy_collapse", {"entropy": 0.02}),
    ("length_collapse", {"response_len": 1.0}),
    ("length_limit", {"no_eos_frac": 1.0}),
    ("ratio_spike", {"ratio_max": 40.0}),
    ("identical_answers", {"distinct_responses": 0.125}),
    ("value_loss_diverging", {"value_loss": 50.0}),
])
def test_each_check_fires_on_its_symptom_with_a_cause_and_a_setting_to_try(code, bad):
    stream = [healthy(s) for s in range(10)] + [healthy(10, **bad)]
    warnings = run(stream)
    assert codes(warnings[:10]) == set()
    assert [w.split(":", 1)[0] for w in warnings[10]] == [code]
    text = warnings[10][0]
    assert any(word in text for word in ("raise", "lower", "set", "check"))  # names a setting to try


def test_entropy_collapse_is_judged_against_the_first_step():
    stream = [healthy(0, entropy=3.0)] + [healthy(s, entropy=0.2) for s in range(1, 3)]
    assert codes(run(stream)) == {"entropy_collapse"}


def test_a_lasting_problem_is_repeated_only_every_few_steps():
    warnings = run([healthy(s, kl=-3.0) for s in range(25)])
    assert [i for i, ws in enumerate(warnings) if ws] == [0, 10, 20]


def test_non_finite_metrics_are_fatal():
    monitor = HealthMonitor(max_new_tokens=53)
    warnings, fatal = monitor.check(3, healthy(3, policy_loss=float("nan")))
    assert fatal and "policy_loss" in warnings[0] and "last checkpoint" in warnings[0]
    assert monitor.check(4, healthy(4))[1] is False


def test_monitor_state_round_trips_for_resume():
    a = HealthMonitor(max_new_tokens=53)
    for s in range(6):
        a.check(s, healthy(s, kl=-3.0))
    b = HealthMonitor(max_new_tokens=53)
    b.load_state_dict(a.state_dict())
    assert b.check(7, healthy(7, kl=-3.0)) == a.check(7, healthy(7, kl=-3.0))
