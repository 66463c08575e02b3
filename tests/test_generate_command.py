"""``aldar generate`` end to end against the Freepik fake, and its skip / error lines."""

from __future__ import annotations

import logging

import pytest

from agent.cli import main
from tests.fakes.provider_servers import FreepikFake, assert_secret_absent
from tools.images import load_image
from tools.generation.png_metadata import read_generation_parameters

KEY = "fpk-SECRET-cli-77aa88bb99"


@pytest.fixture
def freepik(monkeypatch):
    with FreepikFake(key=KEY) as fake:
        monkeypatch.setenv("ALDAR_FREEPIK_BASE_URL", fake.base_url)
        yield fake


def test_generate_with_freepik_saves_images_and_skips_providers_without_keys(freepik, monkeypatch, tmp_path,
                                                                             capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DEEPAI_API_KEY", "x")
    monkeypatch.delenv("DEEPAI_API_KEY")
    monkeypatch.setenv("FREEPIK_API_KEY", "x")
    monkeypatch.delenv("FREEPIK_API_KEY")  # both restored to "unset" after the test; the key comes from .env
    (tmp_path / ".env").write_text(f"FREEPIK_API_KEY={KEY}\n")

    code = main(["generate", "--provider", "freepik", "--provider", "deepai", "--prompt", "aldar on a donkey",
                 "-n", "2", "--seed", "11", "--out", str(tmp_path / "cmp"), "-q"])

    out, err = capsys.readouterr()
    assert code == 0
    assert "deepai: skipped — DEEPAI_API_KEY is not set (add it to .env; get one at" in " ".join(err.split())
    files = sorted((tmp_path / "cmp").glob("freepik_*.png"))
    assert len(files) == 2 and all(load_image(f).size == (64, 64) for f in files)
    assert read_generation_parameters(files[0])["aldar"]["seed"] == 11
    assert "2 image(s) saved" in out and all(f.name in out for f in files)  # the table lists each file
    (request,) = freepik.requests
    assert request.path == "/v1/ai/text-to-image" and request.json()["num_images"] == 2
    assert request.json()["prompt"] == "aldar on a donkey" and request.headers["x-freepik-api-key"] == KEY
    assert_secret_absent(KEY, records=caplog.records, folders=[tmp_path / "cmp"], texts=[out, err])


def test_generate_defaults_to_the_test_prompt_and_the_comparisons_folder(freepik, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FREEPIK_API_KEY", KEY)
    monkeypatch.setenv("ALDAR_OUTPUT_DIR", str(tmp_path / "results"))

    assert main(["generate", "--provider", "freepik", "-n", "1", "-q"]) == 0
    assert len(list((tmp_path / "results" / "comparisons").glob("freepik_*.png"))) == 1
    assert freepik.requests[0].json()["prompt"].startswith("aldarkose")


def test_generate_with_no_keys_prints_one_line_per_provider_and_fails(tmp_path, capsys):
    code = main(["generate", "--provider", "freepik", "--provider", "gemini", "--out", str(tmp_path / "o"), "-q"])

    out, err = capsys.readouterr()
    flat = " ".join(err.split())
    assert code == 2
    assert "freepik: skipped — FREEPIK_API_KEY is not set" in flat and "gemini: skipped — GEMINI_API_KEY is not set" in flat
    assert "no generator produced an image" in flat and not (tmp_path / "o").exists()


def test_one_failing_provider_does_not_stop_the_others(freepik, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FREEPIK_API_KEY", KEY)
    monkeypatch.setenv("DEEPAI_API_KEY", "dai-key-123456")
    monkeypatch.setenv("ALDAR_DEEPAI_BASE_URL", freepik.base_url)  # the Freepik fake refuses DeepAI's key header

    code = main(["generate", "--provider", "deepai", "--provider", "freepik", "-n", "1", "--out", str(tmp_path), "-q"])

    out, err = capsys.readouterr()
    assert code == 0 and "deepai: failed — deepai rejected the API key (HTTP 401" in " ".join(err.split())
    assert len(list(tmp_path.glob("freepik_*.png"))) == 1


@pytest.mark.parametrize("argv, message", [
    (["--provider", "dalle"], "unknown provider 'dalle'"),
    (["--provider", "lora"], "--provider lora needs the LoRA"),
    (["--provider", "lora", "--lora", "missing.safetensors"], "missing.safetensors"),
    (["--provider", "freepik", "--lora-scale", "-1"], "--lora-scale -1 is out of range — use a scale from 0 to 4"),
    (["--provider", "freepik", "--lora-scale", "9"], "--lora-scale 9 is out of range — use a scale from 0 to 4"),
])
def test_bad_arguments_fail_before_any_request(argv, message, freepik, monkeypatch, capsys):
    monkeypatch.setenv("FREEPIK_API_KEY", KEY)
    assert main(["generate", *argv, "-q"]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert freepik.requests == []


def test_local_generators_get_the_lora_settings_and_share_prompts_and_seed(freepik, monkeypatch, tmp_path, capsys):
    import tools.generation.local as generator

    calls = []

    def fake_generate_local(profile, prompts, out_dir, sampling, **kwargs):
        calls.append(dict(kwargs, prompts=prompts, out_dir=out_dir, profile=profile.name, sampling=sampling))
        return [generator.GeneratedImage(out_dir / f"{kwargs['name']}.png", kwargs["name"], prompts[0], sampling.seed)]

    monkeypatch.setattr(generator, "generate_local", fake_generate_local)
    monkeypatch.setenv("FREEPIK_API_KEY", KEY)
    monkeypatch.setenv("ALDAR_LCM_LORA", str(tmp_path / "my-lcm-lora"))  # a configured LCM-LoRA reaches the sampler
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    lora.write_bytes(b"not empty")

    code = main(["generate", "--profile", "tiny", "--provider", "lora", "--provider", "base", "--provider", "freepik",
                 "--lora", str(lora), "--lora-scale", "0.7", "--lcm", "--prompt", "aldar", "-n", "1", "--seed", "5",
                 "--out", str(tmp_path / "o"), "-q"])

    assert code == 0
    assert [(c["name"], c["lora_path"], c["lora_scale"], c["sampling"].use_lcm, c["sampling"].seed, c["prompts"])
            for c in calls] == [("lora", lora, 0.7, True, 5, ["aldar"]), ("base", None, 0.7, True, 5, ["aldar"])]
    assert calls[0]["profile"] == "tiny" and calls[0]["sampling"].images_per_prompt == 1
    assert {c["sampling"].lcm_lora for c in calls} == {str(tmp_path / "my-lcm-lora")}
    assert freepik.requests[0].json()["seed"] == 5 and freepik.requests[0].json()["prompt"] == "aldar"


@pytest.mark.parametrize("failure", ["401", "garbage", "timeout"])
def test_a_keyed_provider_that_fails_is_named_instead_of_asking_for_a_key(freepik, monkeypatch, tmp_path, capsys,
                                                                          failure):
    import requests

    from tests.fakes.provider_servers import FakeClock, Reply
    from tools.providers.http import HttpClient

    make_client = HttpClient.__init__

    def client_without_waits(self, *args, **kwargs):  # retries back off on a fake clock: no sleeping
        make_client(self, *args, **kwargs)
        FakeClock().install(self)

    monkeypatch.setattr(HttpClient, "__init__", client_without_waits)
    monkeypatch.setenv("FREEPIK_API_KEY", KEY if failure != "401" else "fpk-WRONG-key-000000")
    if failure == "garbage":
        freepik.script("POST", "/v1/ai/text-to-image", *[Reply(200, body=b"<html>not json</html>",
                                                               content_type="text/html")] * 5)
    elif failure == "timeout":
        def timed_out(*args, **kwargs):
            raise requests.ReadTimeout("read timed out")

        monkeypatch.setattr(requests.Session, "request", timed_out)

    code = main(["generate", "--provider", "freepik", "-n", "1", "--out", str(tmp_path / "o"), "-q"])

    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "freepik: failed" in err
    assert "no generator produced an image: freepik failed" in err and "set a key in .env" not in err


def test_without_provider_the_newest_lora_the_base_and_each_keyed_competitor_generate(freepik, monkeypatch,
                                                                                      tmp_path, capsys):
    import os

    import tools.generation.local as generator

    calls = []

    def fake_generate_local(profile, prompts, out_dir, sampling, **kwargs):
        calls.append(kwargs)
        return [generator.GeneratedImage(out_dir / f"{kwargs['name']}.png", kwargs["name"], prompts[0], sampling.seed)]

    monkeypatch.setattr(generator, "generate_local", fake_generate_local)
    monkeypatch.setenv("FREEPIK_API_KEY", KEY)
    results = tmp_path / "results"
    older, newer = (results / "runs" / name / "pytorch_lora_weights.safetensors" for name in ("round_02", "round_01"))
    for path, mtime in ((older, 1_000_000), (newer, 2_000_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"weights")
        os.utime(path, (mtime, mtime))

    code = main(["generate", "--profile", "tiny", "--output-dir", str(results), "--prompt", "aldar", "-n", "1", "-q"])

    err = " ".join(capsys.readouterr().err.split())
    assert code == 0
    assert [(c["name"], c["lora_path"]) for c in calls] == [("lora", newer), ("base", None)]
    assert len(freepik.requests) == 1  # the one competitor with a key
    assert "deepai: skipped — DEEPAI_API_KEY is not set" in err and "gemini: skipped" in err


def test_two_calls_into_one_folder_keep_both_calls_images(tmp_path, capsys):
    # No keys and no trained LoRA: the base model alone draws (it used to fail with "no generator produced an image").
    import re

    argv = ["generate", "--profile", "tiny", "--prompt", "aldarkose on a donkey", "-n", "1",
            "--output-dir", str(tmp_path / "results"), "--out", str(tmp_path / "o"), "-q"]
    assert main(argv) == 0
    assert main(argv) == 0
    files = sorted(p.name for p in (tmp_path / "o").glob("*.png"))
    assert len(files) == 2, files
    assert all(re.fullmatch(r"base_\d{8}_\d{6}_p00_00_s42(-2)?\.png", name) for name in files), files
    assert read_generation_parameters(tmp_path / "o" / files[0])["aldar"]["generator"] == "base"
