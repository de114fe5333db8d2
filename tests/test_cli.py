import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import EvalConfig, FeedbackConfig, GymConfig, PPOConfig, SFTConfig, field_help
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
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the generated flags reached the resolved config
    assert (saved["model"], saved["max_steps"], saved["batch_size"], saved["report_to"], saved["eval_fraction"]) == \
        ("tiny", 3, 2, "none", 0.0)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi."}, {"prompt": "Say bye."}])
    proc = rlhf("generate", "--model", str(out), "--prompts", str(prompts), "--max-new-tokens", "5", "--output",
                str(tmp_path / "g.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Say hi.", "Say bye."] and all(isinstance(r["response"], str) for r in rows)
    # loading a saved model: transformers' weight-loading bar and deprecation notices stay out of our output
    for noise in ("Loading weights", "FutureWarning", "DeprecationWarning"):
        assert noise not in proc.stderr, proc.stderr


def test_version_prints_the_package_version():
    from importlib.metadata import version

    from rlhfkit import __version__

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"rlhfkit {__version__}" and __version__ == version("rlhfkit")


def test_sample_takes_samples_per_prompt_as_ppo_and_eval_spell_it(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi."}])
    out = tmp_path / "c.jsonl"
    r = CliRunner().invoke(app, ["sample", "--model", "tiny", "--prompts", str(prompts), "--output", str(out),
                                 "--samples-per-prompt", "3", "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text().splitlines()[0])["responses"]) == 3


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


def help_text(*command: str) -> str:
    """``rlhf COMMAND --help`` as one line: the table's borders dropped and wrapped help joined up."""
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    lines = (line.strip().strip("│╭╮╰╯─").strip() for line in result.output.splitlines())
    return " ".join(" ".join(lines).split())


@pytest.mark.parametrize("command, cls, flags", [
    (["sft"], SFTConfig, {"max_steps": "--max-steps", "batch_size": "--batch-size", "lr": "--lr", "lora": "--lora",
                          "report_to": "--report-to"}),
    (["ppo"], PPOConfig, {"ppo_epochs": "--ppo-epochs", "num_minibatches": "--num-minibatches",
                          "value_model": "--value-model", "lora": "--full", "resume": "--resume"}),
])
def test_help_lists_the_options_generated_from_config_fields_with_their_help(command, cls, flags):
    text = help_text(*command)
    helps = field_help(cls)
    for name, flag in flags.items():
        assert flag in text and helps[name] in text, (name, text)
    assert "--config" in text and "--set" in text


def config_commands():
    """(command path, config class) of every command whose options come from a config dataclass."""
    return [(["sft"], SFTConfig), (["ppo"], PPOConfig), (["gym"], GymConfig), (["eval"], EvalConfig),
            (["feedback", "import"], FeedbackConfig), (["feedback", "export"], FeedbackConfig)]


@pytest.mark.parametrize("path, cls", [pytest.param(path, cls, id=" ".join(path)) for path, cls in config_commands()])
def test_each_generated_option_has_its_fields_help_and_leaves_the_config_alone_by_default(path, cls):
    import typer

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    helps = field_help(cls)
    generated = [p for p in command.params if p.name in helps]
    assert len(generated) >= 3
    for param in generated:
        assert param.help.startswith(helps[param.name]) and param.default is None, param.name


def stub(monkeypatch, module: str, **attrs):
    """Put a stand-in for a stage module in sys.modules, so a command runs without loading a model."""
    import sys
    import types

    fake = types.ModuleType(module)
    fake.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, module, fake)


class Seen:
    """A stage function that records the config it was called with."""

    def __init__(self, result=None):
        self.cfg, self.result = None, result

    def __call__(self, cfg, *args, **kwargs):
        self.cfg = cfg
        return self.result


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_generated_flags_beat_set_which_beats_the_file_and_a_flag_left_out_keeps_the_files_value(monkeypatch, tmp_path):
    train = Seen()
    stub(monkeypatch, "rlhfkit.stages.ppo", train_ppo=train, PPOHealthError=RuntimeError)
    cfg_file = tmp_path / "ppo.yaml"
    cfg_file.write_text("max_steps: 7\nlr: 1.0e-4\nbatch_size: 16\nlora: false\nnum_minibatches: 4\n")
    invoke("ppo", "--config", str(cfg_file), "--set", "batch_size=4", "--set", "max_steps=5", "--max-steps", "3",
           "--policy", "tiny", "--reward", "judge:length", "--prompts", "p.jsonl", "--ppo-epochs", "2", "--resume",
           "--seed", "5")
    cfg = train.cfg
    assert (cfg.max_steps, cfg.batch_size, cfg.lr, cfg.lora, cfg.num_minibatches) == (3, 4, 1e-4, False, 4)
    assert (cfg.policy, cfg.reward, cfg.prompts, cfg.ppo_epochs, cfg.resume, cfg.seed) == \
        ("tiny", "judge:length", "p.jsonl", 2, True, 5)
    assert cfg.max_new_tokens == PPOConfig().max_new_tokens
    invoke("ppo", "--config", str(cfg_file), "--reward", "judge:length", "--prompts", "p.jsonl", "--lora")
    assert train.cfg.lora is True and train.cfg.resume is False


def test_a_bad_value_for_a_generated_flag_is_a_config_error_naming_the_key(monkeypatch):
    from rlhfkit.config import ConfigError

    stub(monkeypatch, "rlhfkit.stages.sft", train_sft=Seen())
    with pytest.raises(ConfigError, match="report_to: expected one of"):
        invoke("sft", "--data", "d.jsonl", "--report-to", "nowhere")


def test_generate_takes_no_chat_and_set_like_every_command(monkeypatch, tmp_path):
    gen = Seen(result=[])
    stub(monkeypatch, "rlhfkit.models.generation", generate_file=gen)
    invoke("generate", "--model", "tiny", "--prompt", "hi", "--no-chat", "--set", "temperature=0.5", "--top-k", "3")
    assert (gen.cfg.model, gen.cfg.chat, gen.cfg.temperature, gen.cfg.top_k) == ("tiny", False, 0.5, 3)
    invoke("generate", "--prompt", "hi")
    assert (gen.cfg.model, gen.cfg.chat, gen.cfg.temperature) == ("default", True, 0.0)


def test_renamed_repeatable_and_positional_generated_flags(monkeypatch, tmp_path):
    evaluate = Seen(result={"n_prompts": 1, "reference": "a", "models": []})
    stub(monkeypatch, "rlhfkit.stages.evaluate", evaluate_models=evaluate)
    invoke("eval", "--model", "a=tiny", "--model", "tiny", "--prompts", "p.jsonl", "--samples-per-prompt", "2",
           "--output", str(tmp_path / "eval"))
    assert evaluate.cfg.models == ["a=tiny", "tiny"] and evaluate.cfg.samples_per_prompt == 2

    train = Seen(result={"eval": {"mean_return": 1.0}})
    stub(monkeypatch, "rlhfkit.stages.gym_ppo", train_gym=train)
    invoke("gym", "Pendulum-v1", "--total-steps", "512", "--set", "num_envs=2", "--resume")
    assert (train.cfg.env_id, train.cfg.total_steps, train.cfg.num_envs, train.cfg.resume) == ("Pendulum-v1", 512, 2, True)
    invoke("gym")
    assert train.cfg.env_id == GymConfig().env_id


def test_feedback_simulate_and_sample_take_their_generated_flags(monkeypatch):
    simulate = Seen()
    stub(monkeypatch, "rlhfkit.feedback.simulate", simulate_feedback=simulate)
    invoke("feedback", "simulate", "--judge", "length", "--candidates", "c.jsonl", "--kind", "compare",
           "--temperature", "0.5", "--annotators", "2", "--flip-rate", "0.1", "--set", "compare_pairs=2")
    cfg = simulate.cfg
    assert (cfg.judge, cfg.kind, cfg.temperature, cfg.annotators, cfg.flip_rate, cfg.compare_pairs) == \
        ("length", "compare", 0.5, 2, 0.1, 2)

    sample = Seen()
    stub(monkeypatch, "rlhfkit.stages.sample", sample_candidates=sample)
    invoke("sample", "--model", "tiny", "--prompts", "p.jsonl", "--k", "2", "--max-new-tokens", "4", "--top-p", "0.9")
    assert (sample.cfg.k, sample.cfg.max_new_tokens, sample.cfg.top_p, sample.cfg.temperature) == (2, 4, 0.9, 1.0)


def test_the_annotator_commands_take_the_generated_db_flag(tmp_path):
    db = str(tmp_path / "f.db")
    token = invoke("feedback", "add-annotator", "--db", db, "--name", "ann").stdout.strip()
    assert token
    assert "ann: disabled" in invoke("feedback", "disable-annotator", "--db", db, "--name", "ann").stderr
    assert "ann: enabled" in invoke("feedback", "enable-annotator", "--db", db, "--name", "ann").stderr
    assert invoke("feedback", "rotate-token", "--db", db, "--name", "ann").stdout.strip() not in ("", token)
