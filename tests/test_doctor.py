"""aldar doctor: results per check, exit codes through the real CLI, fixes on every failure, keys only masked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.cli import main
from tools import doctor
from tools.doctor import FAIL, INFO, OK, WARN, exit_code, run_checks
from tools.secrets import mask

KEY = "sk-doctor-test-9f8e7d6c5b4a3210QRST"


def by_name(results) -> dict:
    return {r.name: r for r in results}


def flat(text: str) -> str:
    return " ".join(text.split())  # undo rich's line wrapping


def test_tiny_profile_is_ready(tiny_settings):
    results = run_checks(tiny_settings)
    assert exit_code(results) == 0
    checks = by_name(results)
    for name in ("python", "torch", "diffusers", "pillow", "prompt-toolkit", "device", "tiny profile", "references",
                 "taxonomy", "output folder"):
        assert checks[name].status == OK, checks[name]
    assert "toy-world weights present" in checks["tiny profile"].detail
    assert "5 images" in checks["references"].detail
    assert "8 categories" in checks["taxonomy"].detail
    # Real weights are missing in the test cache, but tiny does not need them.
    assert checks["model: SDXL base"].status == INFO and "not needed" in checks["model: SDXL base"].detail
    assert all(r.status in (OK, INFO, WARN) for r in results)
    assert checks["DEEPSEEK_API_KEY"].status == checks["OPENAI_API_KEY"].status == WARN  # no LLM key at all
    assert all(r.fix for r in results if r.status in (WARN, FAIL))


def test_missing_toy_world_weights_fail_the_tiny_profile_with_the_fix(tiny_settings, monkeypatch, tmp_path):
    from tools import models

    monkeypatch.setattr(models, "toy_world_weights", lambda: {"clip": tmp_path / "clip", "sdxl": tmp_path / "sdxl"})
    tiny = doctor.run_check(doctor.check_tiny_build, tiny_settings)[0]
    assert tiny.status == FAIL and "toy-world weights missing" in tiny.detail
    assert "git checkout -- tools/world/weights" in tiny.fix and "python -m tools.world.build" in tiny.fix
    other = doctor.run_check(doctor.check_tiny_build, tiny_settings.replace(profile="sdxl"))[0]
    assert other.status == WARN  # sdxl runs without them


def test_sdxl_with_missing_weights_fails_with_the_fix(tiny_settings):
    results = run_checks(tiny_settings.replace(profile="sdxl"))
    assert exit_code(results) == 1
    checks = by_name(results)
    base, clip = checks["model: SDXL base"], checks["model: CLIP scorer"]
    assert base.status == clip.status == FAIL
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in base.fix
    assert "--base-model" in base.fix and ".safetensors" in base.fix and "--profile tiny" in base.fix
    assert "hf download openai/clip-vit-large-patch14" in clip.fix and "--clip-model" in clip.fix
    assert checks["model: LCM-LoRA"].status == INFO  # only needed with use_lcm
    failing = {r.name for r in results if r.status == FAIL}
    assert failing == {"model: SDXL base", "model: CLIP scorer"}


def test_lcm_lora_is_required_when_use_lcm_is_on(tiny_settings):
    checks = by_name(doctor.check_models(tiny_settings.replace(profile="sdxl", use_lcm=True)))
    assert checks["model: LCM-LoRA"].status == FAIL
    assert "lcm_lora" in checks["model: LCM-LoRA"].fix


def test_local_model_folders_count_as_present(tiny_settings, tmp_path):
    (tmp_path / "sdxl").mkdir()
    (tmp_path / "clip").mkdir()
    settings = tiny_settings.replace(profile="sdxl", base_model=str(tmp_path / "sdxl"), clip_model=str(tmp_path / "clip"))
    checks = by_name(doctor.check_models(settings))
    assert checks["model: SDXL base"].status == checks["model: CLIP scorer"].status == OK
    assert "local path" in checks["model: SDXL base"].detail


def test_keys_are_shown_masked_never_raw(tiny_settings, monkeypatch, capsys):
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_API_KEY", "short-key")
    checks = by_name(doctor.check_api_keys(tiny_settings))
    assert checks["DEEPSEEK_API_KEY"].status == OK and mask(KEY) in checks["DEEPSEEK_API_KEY"].detail
    assert checks["FREEPIK_API_KEY"].status == WARN and "not set" in checks["FREEPIK_API_KEY"].detail
    assert checks["OPENAI_API_KEY"].status == INFO  # the Deepseek key already configures the LLM
    for result in checks.values():
        assert KEY not in result.detail + result.fix and "short-key" not in result.detail + result.fix

    code = main(["doctor", "--profile", "tiny", "--references", str(tiny_settings.references)])
    output = capsys.readouterr()
    shown = output.out + output.err
    assert code == 0
    assert KEY not in shown and "short-key" not in shown
    assert mask(KEY) in shown  # "****QRST": the user sees which key is loaded


def test_cli_exit_codes_and_fix_lines(tmp_path, capsys):
    assert main(["doctor", "--profile", "tiny"]) == 0
    tiny_out = flat(capsys.readouterr().out)
    assert "ready for profile tiny" in tiny_out

    assert main(["doctor", "--profile", "sdxl", "--output-dir", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    shown = flat(captured.out + captured.err)
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in shown
    assert "or run offline with --profile tiny" in shown
    assert "2 required check(s) failed" in shown
    assert not (tmp_path / "out").exists()  # doctor probes, it does not create the results folder


def test_tiny_lists_as_many_fix_lines_as_it_counts_missing_and_no_sdxl_downloads(capsys):
    import re

    assert main(["doctor", "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    fixes = [line for line in out.splitlines() if re.match(r"\s+(warn|FAIL) \S", line)]
    (count,) = re.findall(r"\((\d+) optional item\(s\) missing\)", flat(out))
    assert len(fixes) == int(count) == 5  # the five API keys; was "5 missing" above 8 lines
    assert "hf download" not in out and "not needed with --profile tiny" in flat(out)


def test_files_skipped_in_the_references_are_named(tiny_settings):
    (Path(tiny_settings.references) / "notes.txt").write_text("x")
    results = doctor.check_references(tiny_settings)
    assert [r.status for r in results] == [OK, INFO] and "skipped 1 file(s)" in results[1].detail
    assert "notes.txt" in results[1].detail


def test_bad_references_and_taxonomy_fail_with_fixes(tiny_settings, tmp_path):
    empty = tmp_path / "no-pictures"
    empty.mkdir()
    result = doctor.run_check(doctor.check_references, tiny_settings.replace(references=str(empty)))[0]
    assert result.status == FAIL and str(empty) in result.detail and "--references" in result.fix
    assert exit_code([result]) == 1

    bad = tmp_path / "taxonomy.json"
    bad.write_text('{"categories": {"eyes": ["narrow eyes"', encoding="utf-8")
    failing = [r for r in run_checks(tiny_settings.replace(taxonomy=str(bad))) if r.status == FAIL]
    assert [r.name for r in failing] == ["taxonomy"]
    assert "not valid JSON" in failing[0].detail and failing[0].fix


def test_output_folder_under_a_file_fails(tiny_settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = doctor.check_output_folder(tiny_settings.replace(output_dir=str(blocker / "results")))[0]
    assert result.status == FAIL and "--output-dir" in result.fix
    writable = doctor.check_output_folder(tiny_settings)[0]
    assert writable.status == OK
    assert not any(p.name.startswith(".aldar-doctor-") for p in tmp_path.rglob("*"))  # probe file removed


def test_missing_or_old_packages_and_old_python_fail(tiny_settings, monkeypatch):
    monkeypatch.setattr(doctor, "required_packages",
                        lambda: {"rich": "999.0", "aldar-no-such-package": "1.0", "pillow": "1.0"})
    checks = by_name(doctor.check_packages(tiny_settings))
    assert checks["rich"].status == FAIL and "needs >= 999.0" in checks["rich"].detail
    assert checks["rich"].fix == "pip install -U 'rich>=999.0'"
    assert checks["aldar-no-such-package"].status == FAIL and "not installed" in checks["aldar-no-such-package"].detail
    assert checks["pillow"].status == OK
    monkeypatch.setattr(doctor, "MIN_PYTHON", (99, 0))
    python = doctor.check_python(tiny_settings)[0]
    assert python.status == FAIL and "99.0" in python.fix


def test_a_package_past_the_tested_major_is_a_warning(tiny_settings, monkeypatch):
    assert doctor.tested_below()["transformers"] == "6"  # from the installed project's pyproject ranges
    monkeypatch.setattr(doctor, "required_packages", lambda: {"rich": "1.0", "pillow": "1.0"})
    monkeypatch.setattr(doctor, "tested_below", lambda: {"rich": "2", "pillow": "999"})
    checks = by_name(doctor.check_packages(tiny_settings))
    assert checks["rich"].status == WARN and "newer than tested (< 2)" in checks["rich"].detail
    assert checks["rich"].fix.startswith("pip install 'rich<2'")
    assert checks["pillow"].status == OK


def test_required_packages_come_from_the_project_metadata():
    packages = doctor.required_packages()
    for name in ("torch", "diffusers", "peft", "transformers", "accelerate", "safetensors", "openai",
                 "scikit-image", "requests", "rich", "prompt-toolkit", "pillow"):
        assert name in packages
    assert "pytest" not in packages  # test extras are not required to run


def test_device_check(tiny_settings):
    import torch

    result = doctor.check_device(tiny_settings)[0]
    assert result.status == OK and "picks" in result.detail
    if not torch.cuda.is_available():
        assert "picks cpu" in result.detail
        forced = doctor.run_checks(dataclasses.replace(tiny_settings, device="cuda"))
        device = by_name(forced)["device"]
        assert device.status == FAIL and "--device auto" in device.fix


def test_a_crashing_check_is_reported_not_raised(tiny_settings, monkeypatch):
    def broken(settings):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_taxonomy", broken)
    results = run_checks(tiny_settings)
    failing = [r for r in results if r.status == FAIL]
    assert len(failing) == 1 and "boom" in failing[0].detail and failing[0].fix
    assert by_name(results)["output folder"].status == OK  # later checks still ran


def test_module_imports_are_checked(tmp_path, monkeypatch):
    package = tmp_path / "aldar_fake_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fine.py").write_text("VALUE = 1\n")
    (package / "broken.py").write_text(f"raise ImportError('needs {KEY}')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FREEPIK_API_KEY", KEY)
    imported, failures = doctor.import_all("aldar_fake_pkg")
    assert imported == 1
    assert [f.name for f in failures] == ["module aldar_fake_pkg.broken"]
    assert failures[0].status == FAIL and "ImportError" in failures[0].detail and failures[0].fix
    assert KEY not in failures[0].detail  # error texts are redacted too
    assert doctor.check_modules(None)[0].status == OK  # the real tools package


def test_agent_modules_and_prompt_files(tiny_settings, tmp_path, monkeypatch):
    from agent.commands.doctor import check_agent

    checks = by_name(check_agent(tiny_settings))
    assert checks["agent modules"].status == OK
    assert checks["prompt files"].status == OK and "system.md" in checks["prompt files"].detail
    import agent.llm.prompts

    monkeypatch.setattr(agent.llm.prompts, "PROMPTS_DIR", tmp_path / "no-prompts")
    missing = by_name(check_agent(tiny_settings))["prompt files"]
    assert missing.status == FAIL and "prompts/" in missing.fix
