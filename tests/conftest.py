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
