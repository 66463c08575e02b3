"""tools.settings: precedence defaults < aldar.toml < ALDAR_* env < flags, and every bad value is a ConfigError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.errors import ConfigError
from tools.settings import BUNDLED_TAXONOMY, Settings, load_settings, validate_weights


def write_toml(folder, text: str, name: str = "aldar.toml"):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_fixtures_are_hermetic(tiny_settings, tiny_profile, references_dir, tmp_path):
    assert os.getcwd() == str(tmp_path)
    assert not any(name.endswith("_API_KEY") or name == "ALDAR_PROFILE" for name in os.environ)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert tiny_profile.describe()["profile"] == "tiny"
    assert tiny_settings.output_dir.startswith(str(tmp_path))
    assert tiny_settings.taxonomy_path() == references_dir / "taxonomy.json"


def test_defaults_without_any_file_or_variable():
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.profile == "sdxl"
    assert settings.metric_weights == {"clip": 0.4, "features": 0.4, "ssim": 0.2}
    assert settings.competitors == ["freepik", "deepai", "gemini"]


def test_each_layer_overrides_the_one_below(tmp_path):
    write_toml(tmp_path, '[models]\nprofile = "tiny"\nseed = 7\n[rounds]\nmax_rounds = 5\npatience = 4\n')
    from_file = load_settings(environ={})  # ./aldar.toml is found in the working directory
    assert (from_file.profile, from_file.seed, from_file.max_rounds, from_file.patience) == ("tiny", 7, 5, 4)

    env = {"ALDAR_SEED": "9", "ALDAR_MAX_ROUNDS": "6"}
    from_env = load_settings(environ=env)
    assert (from_env.profile, from_env.seed, from_env.max_rounds, from_env.patience) == ("tiny", 9, 6, 4)

    from_flags = load_settings(environ=env, overrides={"seed": 11, "max_rounds": None})
    assert (from_flags.profile, from_flags.seed, from_flags.max_rounds) == ("tiny", 11, 6)  # None = flag not given


def test_real_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("ALDAR_PROFILE", "tiny")
    monkeypatch.setenv("ALDAR_USE_LCM", "yes")
    monkeypatch.setenv("ALDAR_COMPETITORS", "gemini, freepik")
    monkeypatch.setenv("ALDAR_GUIDANCE_SCALE", "")  # blank means unset
    settings = load_settings()
    assert settings.profile == "tiny" and settings.use_lcm is True
    assert settings.competitors == ["gemini", "freepik"]
    assert settings.guidance_scale == 7.0


def test_config_file_from_aldar_config_and_explicit_path(tmp_path):
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    path = write_toml(elsewhere, 'seed = 3\n[scoring]\nweight_clip = 0.5\nweight_features = 0.3\nweight_ssim = 0.2\n',
                      "mine.toml")
    via_env = load_settings(environ={"ALDAR_CONFIG": str(path)})
    assert via_env.seed == 3 and via_env.metric_weights == {"clip": 0.5, "features": 0.3, "ssim": 0.2}
    assert load_settings(path, environ={}).seed == 3


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_settings(tmp_path / "nope.toml", environ={})
    assert "nope.toml" in str(error.value) and "not found" in str(error.value)


def test_malformed_toml_names_the_file(tmp_path):
    path = write_toml(tmp_path, "[models\nprofile = tiny\n")
    with pytest.raises(ConfigError) as error:
        load_settings(environ={})
    assert str(path.name) in str(error.value) and "not valid TOML" in str(error.value)


def test_unknown_keys_are_rejected(tmp_path):
    write_toml(tmp_path, '[models]\nprofiel = "tiny"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(environ={})
    assert "profiel" in str(error.value) and "known settings" in error.value.fix
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(write_toml(tmp_path, "", "empty.toml"), overrides={"colour": "red"}, environ={})


@pytest.mark.parametrize("environ, words", [
    ({"ALDAR_SEED": "abc"}, "ALDAR_SEED"),
    ({"ALDAR_SEED": "4.5"}, "ALDAR_SEED"),
    ({"ALDAR_SEED": "99999999999999999999999"}, "seed is 99999999999999999999999"),
    ({"ALDAR_SEED": "-1"}, "seed is -1"),
    ({"ALDAR_TRIGGER_TOKEN": "blue bot"}, "trigger_token 'blue bot' is not one word"),
    ({"ALDAR_USE_LCM": "maybe"}, "ALDAR_USE_LCM"),
    ({"ALDAR_PROFILE": "huge"}, "unknown profile 'huge'"),
    ({"ALDAR_DEVICE": "tpu"}, "unknown device 'tpu'"),
    ({"ALDAR_DTYPE": "fp8"}, "unknown dtype 'fp8'"),
    ({"ALDAR_NUM_INFERENCE_STEPS": "0"}, "num_inference_steps is 0"),
    ({"ALDAR_IMAGES_PER_PROMPT": "-1"}, "images_per_prompt is -1"),
    ({"ALDAR_TARGET_SCORE": "1.5"}, "target_score is 1.5"),
    ({"ALDAR_LLM_TIMEOUT_S": "-1"}, "llm_timeout_s is -1"),
])
def test_bad_values_from_the_environment(environ, words):
    with pytest.raises(ConfigError) as error:
        load_settings(environ=environ)
    assert words in str(error.value)
    assert error.value.fix and error.value.exit_code == 2


@pytest.mark.parametrize("toml_text, words", [
    ("seed = 3.7\n", "seed = 3.7"),  # no silent truncation to 3
    ('references = ["a", "b"]\n', "references"),  # a list is not a folder
    ('max_rounds = "three"\n', "max_rounds"),
    ("use_lcm = 1.5\n", "use_lcm"),
    ("competitors = 5\n", "competitors"),
])
def test_bad_values_in_the_toml_file(tmp_path, toml_text, words):
    path = write_toml(tmp_path, toml_text)
    with pytest.raises(ConfigError) as error:
        load_settings(environ={})
    assert words in str(error.value) and str(path.name) in str(error.value)


def test_bad_flag_value_names_the_flag():
    with pytest.raises(ConfigError) as error:
        load_settings(environ={}, overrides={"images_per_prompt": "two"})
    assert "--images-per-prompt" in str(error.value)


@pytest.mark.parametrize("weights, words", [
    ({"clip": 0.5, "features": 0.5, "ssim": 0.5}, "sum to 1.5"),
    ({"clip": 0.2, "features": 0.2, "ssim": 0.2}, "sum to 0.6"),
    ({"clip": 1.2, "features": -0.4, "ssim": 0.2}, "features is negative"),
    ({"clip": float("nan"), "features": 0.4, "ssim": 0.2}, "clip is nan"),
    ({"clip": float("inf"), "features": 0.4, "ssim": 0.2}, "clip is inf"),
])
def test_bad_metric_weights(weights, words):
    with pytest.raises(ConfigError) as error:
        validate_weights(weights)
    assert words in str(error.value)
    assert error.value.fix


def test_weights_are_checked_across_layers(tmp_path):
    write_toml(tmp_path, "[scoring]\nweight_clip = 0.6\n")  # 0.6 + 0.4 + 0.2 = 1.2
    with pytest.raises(ConfigError, match="sum to 1.2"):
        load_settings(environ={})
    fixed = load_settings(environ={}, overrides={"weight_features": "0.2"})
    assert fixed.metric_weights == {"clip": 0.6, "features": 0.2, "ssim": 0.2}
    with pytest.raises(ConfigError, match="nan"):
        load_settings(environ={"ALDAR_WEIGHT_SSIM": "nan"}, overrides={"weight_features": "0.2"})


def test_weights_flag_through_the_cli_parser():
    from agent.cli import build_parser, settings_from_args

    parser = build_parser()
    args = parser.parse_args(["doctor", "--weights", "0.5,0.3,0.2"])
    assert settings_from_args(args).metric_weights == {"clip": 0.5, "features": 0.3, "ssim": 0.2}
    for bad, words in (("0.5,0.5", "three numbers"), ("0.5,0.5,0.5", "sum to 1.5"), ("a,b,c", "not a valid float")):
        with pytest.raises(ConfigError, match=words):
            settings_from_args(parser.parse_args(["doctor", "--weights", bad]))


def test_replace_validates_and_ignores_none():
    settings = load_settings(environ={})
    assert settings.replace(seed=5, profile=None).seed == 5
    with pytest.raises(ConfigError):
        settings.replace(weight_clip=0.9)


def test_taxonomy_path_resolution(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    settings = load_settings(environ={}, overrides={"references": str(folder)})
    assert settings.taxonomy_path() == BUNDLED_TAXONOMY  # nothing beside the references
    (folder / "taxonomy.json").write_text("{}")
    assert settings.taxonomy_path() == folder / "taxonomy.json"
    explicit = settings.replace(taxonomy=str(tmp_path / "mine.json"))
    assert explicit.taxonomy_path() == tmp_path / "mine.json"


def test_taxonomy_path_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings(environ={}, overrides={"taxonomy": "~/tax.json"})
    assert settings.taxonomy_path() == tmp_path / "tax.json"


def test_home_relative_paths_are_expanded_from_every_layer(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    toml = write_toml(tmp_path, 'output_dir = "~/results"\nanalysis_path = "~/m/a.json"\n')
    settings = load_settings(toml, environ={"ALDAR_REFERENCES": "~/refs"})
    assert settings.output_dir == str(tmp_path / "results")
    assert settings.analysis_path == str(tmp_path / "m" / "a.json")
    assert settings.references == str(tmp_path / "refs")
    assert settings.replace(output_dir="~/other").output_dir == str(tmp_path / "other")


def test_misspelt_aldar_variables_are_named_with_the_closest_valid_one():
    from tools.settings import unknown_environment_names

    lines = unknown_environment_names({"ALDAR_PROFLE": "tiny", "ALDAR_CACHE": "/c", "ALDAR_CONFIG": "a.toml",
                                       "ALDAR_SEED": "1", "ALDAR_ZZZQQQ": "1", "HOME": "/root"})
    assert lines == [
        "environment variable ALDAR_PROFLE is not a setting and is ignored — did you mean ALDAR_PROFILE?",
        "environment variable ALDAR_ZZZQQQ is not a setting and is ignored — settings are ALDAR_ + a setting "
        "name in capitals"]


def test_the_cli_warns_about_a_misspelt_variable_before_anything_fails(monkeypatch, capsys):
    from agent.cli import main

    monkeypatch.setenv("ALDAR_PROFLE", "tiny")
    assert main(["run", "--rounds", "0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "ALDAR_PROFLE is not a setting and is ignored — did you mean ALDAR_PROFILE?" in err
    assert err.index("ALDAR_PROFLE") < err.index("--rounds is 0")


def test_tiny_samples_without_sdxls_default_negative_prompt_but_keeps_one_the_user_set():
    from tools.settings import DEFAULT_NEGATIVE_PROMPT

    assert load_settings(overrides={"profile": "sdxl"}, environ={}).sampling_negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert load_settings(overrides={"profile": "tiny"}, environ={}).sampling_negative_prompt == ""
    mine = load_settings(overrides={"profile": "tiny", "negative_prompt": "forest"}, environ={})
    assert mine.sampling_negative_prompt == "forest"


def test_images_per_prompt_zero_is_the_profiles_default_and_a_number_set_is_kept():
    assert load_settings(overrides={"profile": "sdxl"}, environ={}).sampling_images_per_prompt == 2
    assert load_settings(overrides={"profile": "tiny"}, environ={}).sampling_images_per_prompt == 8
    assert load_settings(overrides={"profile": "tiny", "images_per_prompt": 2}, environ={}).sampling_images_per_prompt == 2
    # the repository's aldar.toml leaves the choice to the profile
    repo_toml = Path(__file__).resolve().parents[1] / "aldar.toml"
    settings = load_settings(repo_toml, overrides={"profile": "tiny"}, environ={})
    assert settings.images_per_prompt == 0 and settings.sampling_images_per_prompt == 8
