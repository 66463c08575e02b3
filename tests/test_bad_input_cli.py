"""Bad input through the real CLI: `aldar analyze` stops before any work with one line and exit code 2,
and leaves no analysis JSON behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import main
from tools.settings import BUNDLED_REFERENCES


def good_folder(tmp_path: Path, count: int = 2) -> Path:
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(1, count + 1):
        shutil.copy2(BUNDLED_REFERENCES / f"aldar{i}.png", folder / f"aldar{i}.png")
    return folder


def truncated(folder: Path) -> Path:
    path = folder / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:600])
    return path


def zero_byte(folder: Path) -> Path:
    path = folder / "empty.png"
    path.touch()
    return path


def not_an_image(folder: Path) -> Path:
    path = folder / "notes.jpg"
    path.write_text("meeting notes, not a picture\n" * 10)
    return path


def too_small(folder: Path) -> Path:
    path = folder / "icon.png"
    Image.new("RGB", (48, 48), (255, 128, 0)).save(path)
    return path


BAD_FILES = {"truncated PNG": (truncated, "truncated"), "zero-byte file": (zero_byte, "zero-byte"),
             "non-image file": (not_an_image, "not an image"), "image under 64 px": (too_small, "64 px")}


def run_analyze(tmp_path: Path, capsys, *extra: str) -> tuple[int, str, str, Path]:
    out = tmp_path / "models" / "analysis.json"
    code = main(["analyze", "--profile", "tiny", "--out", str(out), "-q", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def assert_one_line_error(code: int, err: str, out_path: Path, *words: str) -> str:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and " — " in lines[0]  # problem — fix
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in err
    assert not out_path.exists()
    if out_path.parent.exists():
        assert not any(out_path.parent.iterdir()), "no partial or temporary analysis file"
    return lines[0]


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_among_good_references(tmp_path, capsys, case):
    make, words = BAD_FILES[case]
    folder = good_folder(tmp_path)
    bad = make(folder)
    code, _, err, out = run_analyze(tmp_path, capsys, "--references", str(folder))
    assert_one_line_error(code, err, out, str(bad), words)


def test_missing_references_folder(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    code, _, err, out = run_analyze(tmp_path, capsys, "--references", str(missing))
    line = assert_one_line_error(code, err, out, str(missing), "does not exist")
    assert "--references" in line


def test_empty_references_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("pictures go here")
    code, _, err, out = run_analyze(tmp_path, capsys, "--references", str(empty))
    assert_one_line_error(code, err, out, str(empty), "no png/jpg/webp")


@pytest.mark.parametrize("weights, words", [("0.5,0.5,0.5", "sum to 1.5"), ("0.7,0.5,-0.2", "negative"),
                                            ("0.5,0.5", "three numbers"), ("x,y,z", "not a valid float")])
def test_weights_flag_not_summing_to_one(tmp_path, capsys, weights, words):
    code, _, err, out = run_analyze(tmp_path, capsys, "--weights", weights)
    assert_one_line_error(code, err, out, words)


def test_an_error_naming_a_toml_table_keeps_its_brackets(tmp_path, capsys):
    # rich read "[scoring]" as a markup tag and dropped it, leaving "aldar.toml  or"
    code, _, err, out = run_analyze(tmp_path, capsys, "--weights", "0.5,0.5,0.5")
    assert_one_line_error(code, err, out, "in aldar.toml [scoring] or on the command line")


@pytest.mark.parametrize("text, words", [
    ('{"categories": {"eyes": ["narrow eyes", "round eyes"]', "not valid JSON"),
    ('{"categories": {"eyes": ["narrow eyes"]}}', "single description"),
    ('{"templates": ["a picture"], "categories": {"eyes": ["narrow eyes", "round eyes"]}}', "placeholder"),
    ('{"categories": {"eyes": ["smile", "frown"], "mouth": ["smile", "pout"]}}', "smile"),
    ("[]", "JSON object"),
])
def test_malformed_taxonomy(tmp_path, capsys, text, words):
    taxonomy = tmp_path / "taxonomy.json"
    taxonomy.write_text(text, encoding="utf-8")
    code, _, err, out = run_analyze(tmp_path, capsys, "--references", str(good_folder(tmp_path)),
                                    "--taxonomy", str(taxonomy))
    assert_one_line_error(code, err, out, str(taxonomy), words)


def test_missing_taxonomy_file(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    code, _, err, out = run_analyze(tmp_path, capsys, "--taxonomy", str(missing))
    assert_one_line_error(code, err, out, str(missing), "does not exist")


def test_bad_toml_in_working_directory(tmp_path, capsys):
    (tmp_path / "aldar.toml").write_text("[scoring]\nweight_clip = 0.9\n")
    code, _, err, out = run_analyze(tmp_path, capsys)
    assert_one_line_error(code, err, out, "sum to 1.5", "--weights")


def test_installed_entry_point_exits_2_with_one_line(tmp_path):
    """The same through the `aldar` console script in a fresh process (no shared state)."""
    folder = good_folder(tmp_path)
    bad = zero_byte(folder)
    out = tmp_path / "models" / "analysis.json"
    script = Path(sys.executable).with_name("aldar")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]
    result = subprocess.run([*command, "analyze", "--profile", "tiny", "--references", str(folder), "--out", str(out)],
                            capture_output=True, text=True, timeout=1200, env=os.environ.copy(), cwd=tmp_path)  # a hang guard
    assert_one_line_error(result.returncode, result.stderr, out, str(bad), "zero-byte")
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("command", [["analyze"], ["train", "--steps", "2"], ["run", "--rounds", "1"],
                                     ["chat", "-m", "/analyze"], ["score", "--images", "PICTURE"]])
def test_references_given_a_file_says_a_folder_is_expected(tmp_path, capsys, command):
    picture = good_folder(tmp_path) / "aldar1.png"
    command = [str(picture) if word == "PICTURE" else word for word in command]
    code = main([*command, "--profile", "tiny", "--references", str(picture), "--output-dir", str(tmp_path / "out"),
                 "-q"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert f"references {picture} is a file, not a folder — pass --references DIR" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "runs").exists()


def test_chat_takes_references_like_every_command(tmp_path, capsys):
    good_folder(tmp_path)  # tmp_path/refs; tmp_path is the working folder
    assert main(["chat", "--profile", "tiny", "--references", "refs", "--output-dir", "out", "-m", "/config"]) == 0
    assert "│ references │ refs " in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, usage, message", [
    (["run", "--round", "2"], "usage: aldar run", "unrecognized arguments: --round 2 (did you mean --rounds?)"),
    (["generate", "--prov", "base"], "usage: aldar generate", "unrecognized arguments: --prov base"),
    (["chat", "--mesage", "/help"], "usage: aldar chat", "(did you mean --message?)"),
])
def test_flags_are_never_abbreviated_and_a_mistyped_flag_shows_its_command_usage(capsys, argv, usage, message):
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--profile", "tiny"])
    err = " ".join(capsys.readouterr().err.split())
    assert stopped.value.code == 2
    assert err.startswith(usage) and message in err


def test_a_mistyped_command_gets_the_closest_command_and_the_usage(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["trian", "--profile", "tiny"])
    err = " ".join(capsys.readouterr().err.split())
    assert stopped.value.code == 2
    assert err.startswith("usage: aldar") and "unknown command 'trian' (did you mean train?)" in err
