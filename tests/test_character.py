"""Any character, end to end (issue 24 part 1): the trigger token, name and prompt come from the flags,
aldar.toml, <references>/character.json or the folder's name — never from the bundled character — and
everything downstream of the analysis takes them from it. Bad input is one line, nothing half-written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agent.cli import main
from tools.character import (check_prompts, common_word_warning, lora_name, missing_trigger_warning, slug)
from tools.errors import InputError
from tools.settings import BUNDLED_REFERENCES, Settings, load_settings

EXAMPLES = BUNDLED_REFERENCES.parent
ZORABEK = EXAMPLES / "zorabek"
# What the bundled character drew with before the prompt moved into examples/aldar_kose/character.json.
ALDAR_PROMPT = ("aldarkose, Aldar Kose the Kazakh folk trickster, smiling, round face, thin mustache, "
                "orange patterned robe, steppe landscape, children's book illustration")
PROJECT = Path(__file__).resolve().parent.parent

# Descriptions the toy CLIP reads alike on the bundled pictures (measured: friendly/smiling lead by 0.37 on
# Aldar's, 0.34 on Zorabek's; the word-order swap by 0.05 and 0.03 log-odds): no category fits.
UNFIT_TAXONOMY = {"templates": ["a picture of a character with {}", "{}"],
                  "categories": {"mood": ["friendly", "smiling"],
                                 "order": ["smiling friendly", "friendly smiling"]}}


def copy_pictures(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for picture in source.glob("*.png"):
        shutil.copy2(picture, folder / picture.name)
    return folder


# ------------------------------------------------------------------ who the character is
def test_the_bundled_character_keeps_its_name_trigger_and_prompt():
    settings = Settings()
    assert (settings.trigger_token, settings.character_name, settings.test_prompt) == \
        ("aldarkose", "Aldar Köse", ALDAR_PROMPT)


def test_a_character_json_names_the_character_and_the_prompt_is_left_to_the_analysis():
    settings = load_settings(overrides={"references": str(ZORABEK)}, environ={})
    assert (settings.trigger_token, settings.character_name, settings.test_prompt) == ("zorabek", "King Zorabek", "")


def test_pictures_without_a_card_are_named_after_their_folder(tmp_path):
    folder = copy_pictures(ZORABEK, tmp_path / "blue_bot")
    settings = load_settings(overrides={"references": str(folder)}, environ={})
    assert (settings.trigger_token, settings.character_name, settings.test_prompt) == ("bluebot", "blue bot", "")
    assert settings.analysis_path == str(Path(settings.output_dir) / "feature_analysis.json")


def test_flags_win_over_the_card_and_a_new_folder_is_derived_afresh(tmp_path):
    settings = load_settings(overrides={"references": str(ZORABEK), "character_name": "Zora"}, environ={})
    assert (settings.trigger_token, settings.character_name) == ("zorabek", "Zora")
    moved = settings.replace(references=str(copy_pictures(ZORABEK, tmp_path / "mascot")))
    assert (moved.trigger_token, moved.character_name) == ("mascot", "Zora")  # given stays, derived follows
    assert "derived" not in moved.as_dict()


def test_a_broken_character_json_is_one_line_naming_it(tmp_path, capsys):
    folder = copy_pictures(ZORABEK, tmp_path / "mine")
    (folder / "character.json").write_text('{"trigger_token": "zorabek",')
    assert main(["analyze", "--profile", "tiny", "--references", str(folder), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "character.json is not valid JSON" in err
    assert not (tmp_path / "o").exists()


def test_names_and_slugs():
    assert slug("King Zorabek") == "king_zorabek" and slug("Aldar Köse") == "aldar_kose"
    assert lora_name("King Zorabek", "zorabek") == "king_zorabek_lora"
    assert lora_name("", "bluebot") == "bluebot_lora"


@pytest.mark.parametrize("command", ["run", "chat", "train", "generate", "analyze", "score"])
def test_every_command_takes_the_character_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--trigger-token TOKEN" in text and "--character-name NAME" in text and "--references DIR" in text
    if command in ("run", "chat", "generate", "train"):
        assert "--prompt TEXT" in text


# ------------------------------------------------------------------ downstream of the analysis
def test_zorabek_round_prompt_and_lora_come_from_his_analysis(tmp_path):
    from agent.rounds.session import Session

    settings = load_settings(overrides={"profile": "tiny", "references": str(ZORABEK), "competitors": [],
                                        "output_dir": str(tmp_path / "out")}, environ={})
    with Session(settings, quiet=True) as session:
        analysis = session.analyze()
        assert analysis["trigger_token"] == "zorabek" and analysis["character_name"] == "King Zorabek"
        assert session.prompt() == analysis["training_prompt"]
        assert session.prompt().startswith("zorabek, ") and set(analysis["key_features"]) <= set(
            part.strip() for part in session.prompt().split(","))
        config = session.round_train_config()
        assert config.output_name == "king_zorabek_lora" and config.trigger_token == "zorabek"
        assert config.validation_prompt == session.prompt()
    assert (tmp_path / "out" / "feature_analysis.json").is_file()


def test_aldar_draws_with_the_same_prompt_as_before(tiny_settings):
    from agent.rounds.session import Session

    with Session(tiny_settings.replace(competitors=[]), quiet=True) as session:
        assert session.prompt() == ALDAR_PROMPT
        assert session.round_train_config().output_name == "aldar_kose_lora"


def test_a_reused_analysis_for_another_trigger_token_is_refused_with_both_values(tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--profile", "tiny", "--references", str(ZORABEK), "--output-dir", str(out), "-q"]
    assert main(["analyze", *common, "--trigger-token", "kingz"]) == 0
    capsys.readouterr()
    assert main(["run", *common, "--trigger-token", "zorabek", "--competitors", "none", "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'kingz'" in err and "'zorabek'" in err and "--trigger-token kingz" in err
    assert sorted(p.name for p in out.iterdir()) == ["feature_analysis.json"]  # no history, no round folder


def test_a_reused_analysis_of_other_pictures_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    mine = copy_pictures(ZORABEK, tmp_path / "mine")
    assert main(["analyze", "--profile", "tiny", "--references", str(ZORABEK), "--output-dir", str(out), "-q"]) == 0
    (mine / "zorabek5.png").unlink()
    capsys.readouterr()
    code = main(["run", "--profile", "tiny", "--references", str(mine), "--trigger-token", "zorabek",
                 "--output-dir", str(out), "--competitors", "none", "--rounds", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(ZORABEK) in err and str(mine) in err and "aldar analyze --references" in err
    assert sorted(p.name for p in out.iterdir()) == ["feature_analysis.json"]


def test_an_analysis_with_the_derived_trigger_is_taken_as_it_is(tmp_path, capsys):
    """No trigger given anywhere: the analysis' one is the run's (downstream takes it from the analysis)."""
    out = tmp_path / "out"
    mine = copy_pictures(ZORABEK, tmp_path / "mine")
    assert main(["analyze", "--profile", "tiny", "--references", str(mine), "--trigger-token", "kingz",
                 "--output-dir", str(out), "-q"]) == 0
    from agent.rounds.session import Session

    settings = load_settings(overrides={"profile": "tiny", "references": str(mine), "output_dir": str(out),
                                        "competitors": []}, environ={})
    with Session(settings, quiet=True) as session:
        assert session.settings.trigger_token == "kingz" and session.prompt().startswith("kingz, ")


# ------------------------------------------------------------------ taxonomy fit
def test_near_equal_descriptions_are_no_clear_match_not_a_confident_probability():
    from tools.scoring.analyzer import CLEAR_MARGIN, aggregate_categories
    from tools.scoring.taxonomy import Taxonomy

    taxonomy = Taxonomy("t.json", ("{}",), {"mood": ["happy", "sad"], "hat": ["crown", "cap"]})
    # mood: the two near-equal on every picture; hat: crown clearly ahead
    probabilities = {"mood": torch.tensor([[0.55, 0.45], [0.45, 0.55], [0.6, 0.4]]),
                     "hat": torch.tensor([[0.99, 0.01], [0.98, 0.02], [0.999, 0.001]])}
    categories = aggregate_categories(probabilities, taxonomy)
    assert categories["mood"]["clear"] is False and categories["mood"]["margin"] < CLEAR_MARGIN
    assert categories["hat"]["clear"] is True and categories["hat"]["margin"] > 3


def test_the_bundled_taxonomy_fits_both_bundled_characters_but_aldars_expression(tmp_path):
    from tools.models import resolve_profile
    from tools.scoring.analyzer import analyze_references

    settings = load_settings(overrides={"profile": "tiny"}, environ={})
    profile = resolve_profile(settings)
    aldar = analyze_references(BUNDLED_REFERENCES, profile, settings.taxonomy_path(), "aldarkose", "Aldar Köse", None)
    zorabek = analyze_references(ZORABEK, profile, settings.taxonomy_path(), "zorabek", "King Zorabek", None)
    assert aldar["unclear_categories"] == ["expression"]  # smiling 0.16 log-odds ahead of friendly
    assert zorabek["unclear_categories"] == []
    assert aldar["key_features"][-2:] == ["smiling", "steppe landscape"]  # still in the prompt, as before
    assert "no clear match" in aldar["warnings"][0] and "'expression'" in aldar["warnings"][0]


def test_analysis_table_says_no_clear_match():
    from agent.views import render

    analysis = {"references": [{}, {}], "character_name": "Blue Bot", "model": "m",
                "key_feature_details": [{"category": "expression", "feature": "sad"}],
                "categories": {"expression": {"top": [{"feature": "sad", "probability": 0.999, "agreement": 2},
                                                      {"feature": "happy", "probability": 0.001, "agreement": 0}],
                                              "margin": 0.2, "clear": False}}}
    table = render.analysis_table(analysis)
    assert table.title.startswith("key features of Blue Bot")
    assert [row[:2] for row in table.rows] == [["expression", "no clear match (nearest: sad)"]]


def test_a_taxonomy_that_fits_none_of_the_pictures_is_one_line_and_writes_nothing(tmp_path, capsys):
    taxonomy = tmp_path / "unfit.json"
    taxonomy.write_text(json.dumps(UNFIT_TAXONOMY))
    out = tmp_path / "out"
    code = main(["analyze", "--profile", "tiny", "--taxonomy", str(taxonomy), "--output-dir", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "fits none of the pictures" in err and "mood" in err and "order" in err
    assert not out.exists()


def test_a_run_with_a_taxonomy_that_fits_nothing_begins_no_round(tmp_path, capsys):
    taxonomy = tmp_path / "unfit.json"
    taxonomy.write_text(json.dumps(UNFIT_TAXONOMY))
    out = tmp_path / "out"
    code = main(["run", "--profile", "tiny", "--taxonomy", str(taxonomy), "--output-dir", str(out), "--rounds", "1",
                 "--competitors", "none", "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "fits none of the pictures" in err[0]
    history = out / "training_history.json"
    assert not history.exists() or not json.loads(history.read_text()).get("in_progress")
    assert not (out / "feature_analysis.json").exists() and not (out / "runs").exists()


def test_the_robot_example_taxonomy_loads():
    from tools.scoring.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(EXAMPLES / "taxonomies" / "robot.json")
    assert "antenna" in taxonomy.categories and "robot" in taxonomy.templates[0]


# ------------------------------------------------------------------ bad input
def test_a_common_word_as_trigger_token_is_warned_about(tmp_path, capsys):
    assert common_word_warning("robe", ["orange patterned robe", "blue robe"])
    assert not common_word_warning("zorabek", ["orange patterned robe", "{}"])
    code = main(["analyze", "--profile", "tiny", "--trigger-token", "robe", "--output-dir", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 0 and "trigger token 'robe' is a common word already in the prompt vocabulary" in err


def test_a_prompt_without_the_trigger_token_is_warned_about(tmp_path):
    from agent.rounds.session import Session, SessionEvents

    assert missing_trigger_warning("a king on a throne", "zorabek").startswith("prompt 'a king on a throne'")
    assert missing_trigger_warning("zorabek, a king", "zorabek") == ""
    warnings: list[str] = []
    settings = load_settings(overrides={"profile": "tiny", "references": str(ZORABEK), "competitors": [],
                                        "test_prompt": "a king on a throne", "output_dir": str(tmp_path)}, environ={})
    with Session(settings, quiet=True, events=SessionEvents(on_warning=warnings.append)):
        pass
    assert any("does not contain the trigger token 'zorabek' — the LoRA may not activate" in w for w in warnings)


def test_empty_or_repeated_prompts_are_one_line(tmp_path, capsys):
    assert check_prompts([" zorabek, a king ", "zorabek, at sea"]) == ["zorabek, a king", "zorabek, at sea"]
    with pytest.raises(InputError, match="suite prompt 2 is empty"):
        check_prompts(["zorabek, a king", "  "], "suite prompt")
    with pytest.raises(InputError, match=r"suite prompt 3 repeats an earlier one \(suite prompt 1"):
        check_prompts(["zorabek, a king", "zorabek, at sea", "Zorabek,  a king"], "suite prompt")
    out = tmp_path / "images"
    code = main(["generate", "--profile", "tiny", "--provider", "base", "--prompt", "zorabek, a king", "--prompt",
                 "zorabek, a king", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--prompt 2 repeats an earlier one (--prompt 1" in err
    assert not out.exists()


# ------------------------------------------------------------------ Must show: no trace of the first character
# The package and command name `aldar` may appear, and only in these forms: the settings file, a command
# line, the results folder's lock file, a record's schema id, the LoRA's metadata keys ("aldar_<key>": in the
# safetensors header), the PNG text chunk's key and the report's heading.
ALLOWED = re.compile(
    r"aldar\.toml|\.aldar\.lock"
    r"|aldar (?:analyze|train|generate|score|run|chat|story|doctor)\b"
    r"|aldar\.[a-z_]+/\d+"
    r'|"aldar_(?!kose)[a-z0-9_]+":'
    r"|iTXtaldar\x00"
    r"|<title>aldar report</title>|<h1>aldar — ")
FIRST_CHARACTER = re.compile(r"aldar|k[öo]se", re.IGNORECASE)


def first_character_mentions(text: str) -> list[str]:
    cleaned = ALLOWED.sub(" ", text)
    return [cleaned[max(0, m.start() - 30): m.end() + 30] for m in FIRST_CHARACTER.finditer(cleaned)]


def test_the_allowed_forms_are_only_the_package_name():
    assert first_character_mentions('see aldar.toml; run aldar run --rounds 2; "schema": "aldar.feedback/1", '
                                    '"aldar_trigger_token":"zorabek"') == []
    for leak in ("aldar_kose_lora", "Aldar Köse", "aldarkose", "ALDAR", "key features of Aldar", "Kose",
                 "examples/aldar_kose/taxonomy.json", "aldar_kose", '"aldar_kose_lora":', '"name": "aldar"'):
        assert first_character_mentions(leak), leak


def test_a_run_of_king_zorabek_never_names_the_first_character(tmp_path):
    """aldar run on the second bundled character from an empty folder: no 'Aldar' (any case), 'aldar_kose'
    or 'Köse' in its files (names and contents, the LoRA's metadata and the PNG chunks too), its report,
    its prompts (the round's and its prompt suite's) or its console. Tiny, one round of 2 steps, one image per
    prompt: 45-50 s on a 2-core VM shared with other jobs (13 s of CPU)."""
    out = tmp_path / "out"
    env = {**__import__("os").environ, "ALDAR_IMAGES_PER_PROMPT": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--profile", "tiny", "--references", str(ZORABEK),
         "--trigger-token", "zorabek", "--character-name", "King Zorabek", "--output-dir", str(out),
         "--rounds", "1", "--steps", "2", "--competitors", "none"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert first_character_mentions(result.stdout + result.stderr) == []
    files = [p for p in out.rglob("*") if p.is_file()]
    history = json.loads((out / "training_history.json").read_text()) if (out / "training_history.json").is_file() else None
    assert (out / "report.html").is_file() and any(p.name == "king_zorabek_lora.safetensors" for p in files)
    for path in files:
        assert first_character_mentions(str(path.relative_to(tmp_path))) == [], path
        text = path.read_bytes().decode("utf-8", errors="replace")  # binary files too: metadata is UTF-8
        assert first_character_mentions(text) == [], (path, first_character_mentions(text)[:3])
    assert history is not None
    record = history["rounds"][0]
    assert record["prompts"] and all(p.startswith("zorabek, ") for p in record["prompts"])
    suite = [p["text"] for p in (record.get("suite") or {}).get("prompts", [])]
    assert any(p.startswith("zorabek, ") for p in suite)  # the new-context prompts name him by his trigger
