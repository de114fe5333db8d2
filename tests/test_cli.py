import json
import subprocess
import sys

import pytest

from tests.conftest import write_jsonl


def rlhf(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"rlhf {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def test_help_lists_the_pipeline_commands():
    out = rlhf("--help").stdout
    for cmd in ("sft", "generate"):
        assert cmd in out


def test_sft_then_generate_end_to_end_on_the_tiny_model(memorise_file, tmp_path):
    out = tmp_path / "run"
    rlhf("sft", "--model", "tiny", "--data", str(memorise_file), "--output", str(out), "--max-steps", "3",
         "--batch-size", "2", "--report-to", "none", "--set", "eval_fraction=0")
    assert (out / "model.safetensors").exists() and (out / "config.yaml").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi."}, {"prompt": "Say bye."}])
    rlhf("generate", "--model", str(out), "--prompts", str(prompts), "--max-new-tokens", "5", "--output", str(tmp_path / "g.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Say hi.", "Say bye."] and all(isinstance(r["response"], str) for r in rows)


def test_bad_input_gets_a_one_line_error_naming_the_line_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "fine"}, {"prompt": "x", "completion": 3}])
    proc = rlhf("sft", "--model", "tiny", "--data", str(bad), "--output", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert f"{bad}:2: completion: expected a string, got int" in proc.stderr


def test_unknown_config_key_is_rejected_by_name(tmp_path, memorise_file):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    proc = rlhf("sft", "--config", str(cfg), "--data", str(memorise_file), check=False)
    assert proc.returncode == 2 and "learning_rate: unknown key for SFTConfig" in proc.stderr


def the_error_line(proc) -> str:
    """The one ``error:`` line of a run that failed on its input, checking there is no traceback."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_a_nan_score_stops_rm_train_with_one_line_and_leaves_the_run_folder_as_it_was(tmp_path):
    ratings = write_jsonl(tmp_path / "ratings.jsonl", ['{"prompt": "p", "response": "a", "score": NaN}',
                                                       {"prompt": "p", "response": "b", "score": 2}])
    out = tmp_path / "rm"
    out.mkdir()
    (out / "reward_stats.json").write_text('{"mean": 0.1, "std": 1.0}')  # what an earlier run saved
    proc = rlhf("rm", "train", "--model", "tiny", "--data", str(ratings), "--output", str(out),
                "--set", "rating_loss=regression", check=False)
    assert the_error_line(proc) == f"error: {ratings}:1: score: expected a finite number, got NaN"
    assert [p.name for p in out.iterdir()] == ["reward_stats.json"]
    assert (out / "reward_stats.json").read_text() == '{"mean": 0.1, "std": 1.0}'


@pytest.mark.parametrize("command, content, error", [
    pytest.param("sft --model tiny --data {path} --output {out}", b"", "{path}: no records", id="sft-empty"),
    pytest.param("ppo --policy tiny --reward judge:length --prompts {path} --output {out}", b'{"prompt": "caf\xe9"}\n',
                 "{path}:1: invalid UTF-8 at byte 16", id="ppo-latin1"),
    pytest.param("eval --model tiny --prompts {path} --output {out}", b'{"prompt": "a\\udc80"}\n',
                 "{path}:1: prompt: text is not valid Unicode (lone surrogate)", id="eval-lone-surrogate"),
    pytest.param("rm train --model tiny --data {path} --output {out}", b'{"messages": [1, 2]}\n',
                 "{path}:1: messages[0]: expected an object with role and content, got int", id="rm-messages-not-objects"),
    pytest.param("feedback import --db {out}/f.db --project p --candidates {path}", b"\n", "{path}: no records",
                 id="import-blank"),
])
def test_every_stage_refuses_a_bad_file_with_one_line_that_names_it(tmp_path, command, content, error):
    path, out = tmp_path / "input.jsonl", tmp_path / "out"
    path.write_bytes(content)
    out.mkdir()
    proc = rlhf(*command.format(path=path, out=out).split(), check=False)
    assert the_error_line(proc) == "error: " + error.format(path=path)
