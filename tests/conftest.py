import json
import os
from pathlib import Path

import pytest

# Tests never reach a model hub: everything is the shipped model or a tiny model built from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def memorise_file(tmp_path: Path) -> Path:
    """A small memorisation set: eight prompts with fixed answers."""
    words = ["apple", "banana", "cherry", "dragon", "eagle", "falcon", "grape", "harbor"]
    return write_jsonl(tmp_path / "mem.jsonl", [
        {"prompt": f"Say the secret word number {i}.", "completion": f"The secret word number {i} is {w}."}
        for i, w in enumerate(words)
    ])


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test, as in a terminal (a runner started in the background ignores SIGINT)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


TIMES = {"time_step_s", "time_rollout_s", "time_train_s", "time_eval_s", "samples_per_s", "peak_rss_gb", "rss_gb"}


def check_ctrl_c_during_evaluation(monkeypatch, tmp_path: Path, train, make_cfg, module, evaluate_name: str,
                                   saved_step: int, weights: str, tolerance: float = 0.0) -> None:
    """Ctrl-C during the run's second evaluation (``module.<evaluate_name>``, inside optimiser step ``saved_step``):
    the run finishes that step, saves its checkpoint and stops; resumed, it ends as the unbroken run did, with the
    same metrics (times aside) and the same weights (the file ``weights``), to within ``tolerance`` (0: bit for bit)."""
    import signal

    from safetensors.torch import load_file

    from rlhfkit.checkpoint import load_state
    from rlhfkit.tracking import read_metrics

    train(make_cfg(tmp_path / "full"))
    real, calls = getattr(module, evaluate_name), {"n": 0}

    def ctrl_c_in_second_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, evaluate_name, ctrl_c_in_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path / "part"))
    monkeypatch.setattr(module, evaluate_name, real)
    assert load_state(tmp_path / "part" / "checkpoint")[0]["step"] == saved_step
    train(make_cfg(tmp_path / "part", resume=True))
    full, part = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("full", "part"))
    assert [r["step"] for r in part] == [r["step"] for r in full]
    for a, b in zip(full, part):
        for key in set(a) - TIMES:
            assert b[key] == (a[key] if tolerance == 0 else pytest.approx(a[key], abs=tolerance)), (a["step"], key)
    w_full, w_part = (load_file(tmp_path / run / weights) for run in ("full", "part"))
    assert w_full.keys() == w_part.keys()
    for k in w_full:
        assert w_full[k].equal(w_part[k]) if tolerance == 0 else w_full[k].allclose(w_part[k], atol=tolerance), k


@pytest.fixture
def onednn_route(monkeypatch):
    """fp32 products on the oneDNN route for one test, whichever route this machine's measurement chose."""
    from rlhfkit.accel import cpu_linear

    monkeypatch.setenv("RLHFKIT_CPU_MATMUL", "onednn")
    cpu_linear.onednn_chosen.cache_clear()
    yield
    monkeypatch.undo()
    cpu_linear.onednn_chosen.cache_clear()
