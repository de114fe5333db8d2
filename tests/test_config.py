import pytest
import yaml

from rlhfkit.config import ConfigError, SFTConfig, load_config, parse_set, save_config


def test_yaml_then_flags_override_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\nlr: 1.0e-4\nlora: true\n")
    cfg = load_config(SFTConfig, path, {"max_steps": 3})
    assert (cfg.max_steps, cfg.lr, cfg.lora, cfg.batch_size) == (3, 1e-4, True, SFTConfig().batch_size)


def test_set_null_clears_an_optional_key_and_is_refused_for_a_required_one():
    from rlhfkit.config import PPOConfig

    cfg = load_config(PPOConfig, None, parse_set(["missing_eos_penalty=null", "target_kl=0.1"]))
    assert cfg.missing_eos_penalty is None and cfg.target_kl == 0.1
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(PPOConfig, None, parse_set(["max_steps=null"]))


def test_unknown_key_is_an_error_naming_the_key_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_stpes: 7\n")
    with pytest.raises(ConfigError, match=r"c.yaml: max_stpes: unknown key for SFTConfig"):
        load_config(SFTConfig, path)


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: many\n")
    with pytest.raises(ConfigError, match="max_steps: expected an integer, got 'many'"):
        load_config(SFTConfig, path)
    with pytest.raises(ConfigError, match="schedule: expected one of"):
        load_config(SFTConfig, None, {"schedule": "exponential"})


def test_set_strings_are_typed_and_resolved_config_is_saved(tmp_path):
    cfg = load_config(SFTConfig, None, parse_set(["lr=2e-5", "lora=true", "lora_targets=q_proj,v_proj"]))
    assert cfg.lr == 2e-5 and cfg.lora is True and cfg.lora_targets == ["q_proj", "v_proj"]
    saved = yaml.safe_load(save_config(cfg, tmp_path).read_text())
    assert saved["lr"] == 2e-5 and saved["lora_targets"] == ["q_proj", "v_proj"]


def config_classes() -> list[type]:
    import dataclasses

    from rlhfkit import config

    return [obj for obj in vars(config).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == config.__name__]


def test_the_stage_configs_are_all_found():
    names = {cls.__name__ for cls in config_classes()}
    assert {"SFTConfig", "GenerateConfig", "FeedbackConfig", "GymConfig", "EvalConfig", "SampleConfig",
            "SimulateConfig", "RewardConfig", "PPOConfig"} <= names


@pytest.mark.parametrize("cls", config_classes(), ids=lambda cls: cls.__name__)
def test_every_config_field_carries_a_one_sentence_help(cls):
    from dataclasses import fields

    for f in fields(cls):
        text = f.metadata.get("help")
        assert isinstance(text, str) and text.strip(), f"{cls.__name__}.{f.name} has no metadata help"
        assert "\n" not in text and text[0].isupper() and text.endswith("."), f"{cls.__name__}.{f.name}: {text!r}"


def test_field_help_maps_each_field_to_its_metadata_help():
    from dataclasses import fields

    from rlhfkit.config import field_help

    helps = field_help(SFTConfig)
    assert list(helps) == [f.name for f in fields(SFTConfig)]
    assert helps["max_steps"] == "Optimiser steps."


def test_the_lora_targets_are_one_constant_and_each_config_gets_its_own_list():
    from rlhfkit.config import LORA_TARGETS, PPOConfig, RewardConfig

    assert SFTConfig().lora_targets == RewardConfig().lora_targets == PPOConfig().lora_targets == list(LORA_TARGETS)
    cfg = SFTConfig()
    cfg.lora_targets.append("lm_head")
    assert SFTConfig().lora_targets == list(LORA_TARGETS) and "lm_head" not in LORA_TARGETS
