"""tools.models (tiny and sdxl profiles, model locations, loading errors) and tools.secrets."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from tools.errors import ModelNotFoundError
from tests.random_models import random_clip, random_sdxl_components
from tools.models import (TINY_NOTICE, TINY_RESOLUTION, load_clip, load_sdxl_pipeline, model_location,
                          resolve_profile)
from tools.settings import Settings, load_settings

TINY_PROMPT = Settings().test_prompt


def weights_of(components: dict) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value for name in ("unet", "vae", "text_encoder", "text_encoder_2")
            for key, value in components[name].state_dict().items()}


def sdxl_profile(**overrides):
    return resolve_profile(load_settings(overrides={"device": "cpu", **overrides}, environ={}))


# --------------------------------------------------------------------------- tiny profile
def test_random_components_are_deterministic_from_the_seed():
    first = weights_of(random_sdxl_components(seed=3))
    again = weights_of(random_sdxl_components(seed=3))
    other = weights_of(random_sdxl_components(seed=4))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    differing = [k for k in first if not torch.equal(first[k], other[k])]
    assert any(k.startswith("unet.") for k in differing) and any(k.startswith("vae.") for k in differing)
    # Tiny, not a full-size model built by mistake (counted, not timed: a busy machine must not fail it).
    assert sum(v.numel() for v in first.values()) < 5_000_000


def test_random_clip_is_deterministic_and_small():
    model_a, tokenizer = random_clip(seed=1)
    model_b, _ = random_clip(seed=1)
    model_c, _ = random_clip(seed=2)
    state_a, state_b, state_c = model_a.state_dict(), model_b.state_dict(), model_c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)
    ids = tokenizer(["aldarkose"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id  # the byte tokenizer works offline


def test_tiny_pipeline_makes_a_64px_image_reproducibly(tiny_profile):
    pipe = load_sdxl_pipeline(tiny_profile)
    assert load_sdxl_pipeline(tiny_profile) is pipe  # cached per process

    def generate(seed: int):
        return pipe("aldarkose, smiling", num_inference_steps=2, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]

    image = generate(0)
    assert image.shape == (TINY_RESOLUTION, TINY_RESOLUTION, 3)
    assert (image >= 0).all() and (image <= 1).all()
    assert (generate(0) == image).all()
    assert not (generate(1) == image).all()


def test_tiny_clip_encoder_returns_unit_vectors(tiny_profile):
    from PIL import Image

    encoder = load_clip(tiny_profile)
    assert load_clip(tiny_profile) is encoder
    images = encoder.embed_images([Image.new("RGB", (80, 64), (200, 100, 0)), Image.new("RGB", (64, 64))],
                                  batch_size=1)
    texts = encoder.embed_texts(["round face", "thin mustache", "orange robe"])
    assert images.shape[0] == 2 and texts.shape[0] == 3 and images.shape[1] == texts.shape[1]
    assert torch.allclose(images.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert encoder.profile == "tiny"


def test_describe_marks_tiny_results(tiny_profile):
    info = tiny_profile.describe()
    assert info["profile"] == "tiny" and info["notice"] == TINY_NOTICE
    assert "toy world" in info["notice"] and "not for real SDXL" in info["notice"]
    assert tiny_profile.resolution == TINY_RESOLUTION
    real = sdxl_profile().describe()
    assert real["profile"] == "sdxl" and "notice" not in real
    assert real["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (real["device"], real["dtype"]) == ("cpu", "fp32")


def test_tiny_profile_loads_the_committed_toy_world_through_from_pretrained(tiny_profile):
    """The tiny pipeline is the committed fp16 folder loaded as real SDXL loads (fp32 on the CPU), with the
    toy CLIP's text tower as both text encoders and its BPE tokenizer for both."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tools.models import load_toy_world_clip

    pipe = load_sdxl_pipeline(tiny_profile)
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.unet.config.addition_embed_type == "text_time"
    assert isinstance(pipe.vae, AutoencoderKL) and 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32
    import json

    from tools.world import WEIGHTS_DIR
    from tools.world.recipe import MODEL_STAGES, SCORER_ONLY_STAGES, STAGE

    clip, tokenizer = load_toy_world_clip()
    te2 = pipe.text_encoder_2.state_dict()
    same_tower = all(torch.equal(te2[f"text_model.{name}"], value) for name, value in clip.text_model.state_dict().items())
    same_tower = same_tower and torch.equal(te2["text_projection.weight"], clip.text_projection.weight)
    # The pipeline's text encoders are the text tower the UNet trained on; the scorer's CLIP carries it too,
    # unless its last stage taught the scorer alone and no UNet stage moved onto that tower since (as the tried
    # stage retune6 would).
    log = json.loads((WEIGHTS_DIR / "build_log.json").read_text())
    last_unet = [name for name in MODEL_STAGES["unet"] if name in log][-1]
    last_clip = [name for name in MODEL_STAGES["model"] if name in log][-1]
    assert same_tower == (last_clip not in SCORER_ONLY_STAGES or STAGE[last_unet].text_tower == last_clip)
    assert pipe.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert len(tokenizer(TINY_PROMPT).input_ids) < 77  # the default test prompt is never truncated


def test_missing_toy_world_weights_fail_with_the_restore_command(tiny_profile, monkeypatch, tmp_path):
    from tools import models
    from tools.errors import ModelNotFoundError

    monkeypatch.setattr(models, "toy_world_weights", lambda: {"clip": tmp_path / "clip", "sdxl": tmp_path / "sdxl"})
    with pytest.raises(ModelNotFoundError) as caught:
        models.load_toy_world_pipeline()
    assert "toy-world weights" in caught.value.problem
    assert "git checkout -- tools/world/weights" in caught.value.fix and "python -m tools.world.build" in caught.value.fix


# --------------------------------------------------------------------------- real models, offline
def test_model_location_reports_missing_without_waiting(monkeypatch):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE")  # even when the Hub is not declared offline, nothing is fetched
    attempts: list = []  # "without waiting" = without a connection attempt (no timer to lose under load)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address))
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: attempts.append(address))
    assert model_location("nobody-aldar-test/absent-model") == "missing"
    assert attempts == []


def test_model_location_local_and_cached(tmp_path):
    folder = tmp_path / "my-sdxl"
    folder.mkdir()
    assert model_location(str(folder)) == "local"
    # The layout huggingface_hub itself writes: refs/main names the snapshot folder.
    repo = os.path.join(os.environ["HF_HUB_CACHE"], "models--aldar-test--cached-model")
    try:
        os.makedirs(os.path.join(repo, "snapshots", "abc123"))
        os.makedirs(os.path.join(repo, "refs"))
        with open(os.path.join(repo, "refs", "main"), "w") as handle:
            handle.write("abc123")
        with open(os.path.join(repo, "snapshots", "abc123", "model_index.json"), "w") as handle:
            handle.write("{}")
        assert model_location("aldar-test/cached-model") == "cached"
    finally:
        import shutil

        shutil.rmtree(repo, ignore_errors=True)


def test_sdxl_profile_with_missing_base_model_names_model_and_fix():
    with pytest.raises(ModelNotFoundError) as error:
        load_sdxl_pipeline(sdxl_profile(base_model="nobody-aldar-test/absent-sdxl"))
    message = str(error.value)
    assert "nobody-aldar-test/absent-sdxl" in message
    assert "hf download nobody-aldar-test/absent-sdxl" in error.value.fix
    assert "--profile tiny" in error.value.fix and "--base-model" in error.value.fix
    assert error.value.exit_code == 2 and "\n" not in message


def test_missing_clip_model_names_model_and_fix():
    with pytest.raises(ModelNotFoundError) as error:
        load_clip(sdxl_profile(clip_model="nobody-aldar-test/absent-clip"))
    assert "nobody-aldar-test/absent-clip" in str(error.value) and "--clip-model" in error.value.fix


def test_home_relative_local_models_load(tmp_path, monkeypatch):
    """doctor calls "~/models/x" local; the loaders must then load it, not take it for a Hub repo id."""
    from diffusers import StableDiffusionXLPipeline

    monkeypatch.setenv("HOME", str(tmp_path))
    StableDiffusionXLPipeline(**random_sdxl_components(5)).save_pretrained(tmp_path / "sdxl")
    clip, tokenizer = random_clip(5)
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    assert model_location("~/sdxl") == model_location("~/clip") == "local"
    pipe = load_sdxl_pipeline(sdxl_profile(base_model="~/sdxl"))
    expected = random_sdxl_components(5)["unet"].config.block_out_channels
    assert list(pipe.unet.config.block_out_channels) == list(expected)
    encoder = load_clip(sdxl_profile(clip_model="~/clip"))
    assert encoder.model_id == "~/clip" and encoder.image_size == clip.config.vision_config.image_size


@pytest.mark.parametrize("make", ["empty folder", "garbage file"])
def test_broken_local_base_model_is_a_clean_error(tmp_path, make):
    if make == "empty folder":
        source = tmp_path / "not-a-model"
        source.mkdir()
    else:
        source = tmp_path / "broken.safetensors"
        source.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelNotFoundError) as error:
        load_sdxl_pipeline(sdxl_profile(base_model=str(source)))
    assert str(source) in str(error.value) and "--profile tiny" in error.value.fix


# --------------------------------------------------------------------------- secrets
KEY = "sk-aldar-test-0123456789abcdefWXYZ"


@pytest.mark.parametrize("value", [KEY, "short", "abcd", "x" * 15, "sixteen-chars-xy"])
def test_mask_never_reveals_the_key(value):
    from tools.secrets import mask

    shown = mask(value)
    assert value not in shown
    assert shown.startswith("****")
    assert len(shown) <= 8  # at most the last four characters
    if len(value) < 16:
        assert shown == "****"
    assert mask(None) == mask("") == "not set"


def test_redact_scrubs_known_keys_and_extra_values(monkeypatch):
    from tools.secrets import redact

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    text = f"POST ?key={KEY} failed; header Bearer {KEY}; token tok-extra-123"
    cleaned = redact(text, extra=["tok-extra-123"])
    assert KEY not in cleaned and "tok-extra-123" not in cleaned
    assert cleaned.count("***") == 3


def test_log_redaction_covers_third_party_loggers(monkeypatch):
    from tools.secrets import install_log_redaction

    monkeypatch.setenv("DEEPAI_API_KEY", KEY)
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_log_redaction()
        logging.getLogger("urllib3.connectionpool").warning("retrying with api-key %s", KEY)
    finally:
        root.removeHandler(handler)
    assert records and KEY not in records[0] and "***" in records[0]


def test_dotenv_fills_missing_keys_without_overriding(tmp_path, monkeypatch):
    from tools.secrets import api_key, load_dotenv

    monkeypatch.setenv("DEEPSEEK_API_KEY", "from-the-shell-1234567890")
    (tmp_path / ".env").write_text(
        "# comment\n\nDEEPSEEK_API_KEY=from-the-file\nexport FREEPIK_API_KEY='quoted-value-123456'\n"
        'GEMINI_API_KEY="double-quoted"\nnot a line\nDEEPAI_API_KEY=\n', encoding="utf-8")
    found = load_dotenv()  # the working directory is tmp_path
    assert found["DEEPSEEK_API_KEY"] == "from-the-file"
    assert api_key("DEEPSEEK_API_KEY") == "from-the-shell-1234567890"
    assert api_key("FREEPIK_API_KEY") == "quoted-value-123456"
    assert api_key("GEMINI_API_KEY") == "double-quoted"
    assert api_key("DEEPAI_API_KEY") is None  # blank counts as unset
    assert load_dotenv(tmp_path / "absent.env") == {}


def test_dotenv_inline_comments_and_quotes(tmp_path):
    from tools.secrets import load_dotenv

    path = tmp_path / "keys.env"
    path.write_text("FREEPIK_API_KEY=abc123456789  # production key\nGEMINI_API_KEY=\"has # inside\"  # note\n"
                    "DEEPAI_API_KEY=tok#en\n", encoding="utf-8")
    found = load_dotenv(path)
    assert found == {"FREEPIK_API_KEY": "abc123456789", "GEMINI_API_KEY": "has # inside", "DEEPAI_API_KEY": "tok#en"}


def test_logged_tracebacks_are_scrubbed(monkeypatch):
    import io

    from tools.secrets import install_log_redaction

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_log_redaction()
        try:
            raise RuntimeError(f"401 for https://api.example/v1?key={KEY}")
        except RuntimeError:
            logging.getLogger("httpx").exception("request failed")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "RuntimeError: 401 for https://api.example/v1?key=***" in text
    assert KEY not in text


def test_sdxl_loading_uses_the_dtype_keyword_diffusers_expects(tmp_path):
    import warnings

    from diffusers import StableDiffusionXLPipeline

    from tools.models import dtype_kwargs

    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OSError):
            StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "empty"), **dtype_kwargs(torch.float16))
    assert not [w for w in caught if "dtype" in str(w.message)]  # no deprecation notice for users
