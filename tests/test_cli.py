import json
import subprocess
import sys

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
