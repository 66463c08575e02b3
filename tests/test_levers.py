"""The levers character trainers rely on (issue 26), on the tiny profile: validation loss, LoKr/LoHa, masked loss,
identity-free captions and prior preservation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_trainer_features import quick  # a 2-step config without checkpoints
from tools.training.trainer import default_train_config, train_lora

CAPTIONS = ["aldarkose, smiling, blue chapan", "aldarkose, blue chapan", "aldarkose, riding, donkey"]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[tuple[Path, str]]:
    """Three 64 px pictures: a figure (a dark square in the middle) on three backgrounds."""
    folder = tmp_path_factory.mktemp("refs")
    pairs = []
    for index, background in enumerate([(200, 60, 60), (60, 200, 60), (60, 60, 200)]):
        pixels = np.full((64, 64, 3), background, np.uint8)
        pixels[16:48, 20:44] = (30, 30, 30)
        path = folder / f"ref{index}.png"
        Image.fromarray(pixels).save(path)
        pairs.append((path, CAPTIONS[index]))
    return pairs




def fake_scorer(by_step: dict[int, float]):
    def score(images: list[Path]) -> dict[str, float]:
        return {"quality": by_step[int(images[0].name.split("-")[1])]}
    return score


# --------------------------------------------------------------------------- validation loss
def test_validation_loss_is_deterministic_and_logged_at_every_checkpoint(profile, references, tmp_path):
    config = quick(profile, steps=4, checkpoint_every=2, validation_images=1, report_to="tensorboard")
    first = train_lora(config, profile, references, tmp_path / "a", quiet=True,
                       score_checkpoint=fake_scorer({2: 0.4, 4: 0.6}))
    second = train_lora(config, profile, references, tmp_path / "b", quiet=True,
                        score_checkpoint=fake_scorer({2: 0.4, 4: 0.6}))
    assert sorted(first.validation_losses) == [2, 4]
    assert first.validation_losses == second.validation_losses  # fixed noise and timesteps: the same figures
    assert all(np.isfinite(v) and v > 0 for v in first.validation_losses.values())
    with open(first.loss_log, newline="") as handle:
        logged = {int(r["step"]): r["validation_loss"] for r in csv.DictReader(handle)}
    assert logged[1] == "" and float(logged[2]) == pytest.approx(first.validation_losses[2], rel=1e-5)
    assert [s["validation_loss"] for s in first.checkpoint_scores] == [first.validation_losses[2],
                                                                       first.validation_losses[4]]
    record = json.loads((first.run_dir / "checkpoint-000004" / "checkpoint.json").read_text())
    assert record["validation_loss"] == first.validation_losses[4]
    assert "validation loss" in first.chosen_checkpoint["why"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for event_file in (first.run_dir / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "validation_loss" in accumulator.Tags()["scalars"]:
            steps += [e.step for e in accumulator.Scalars("validation_loss")]
    assert steps == [2, 4]


def test_the_choice_says_when_validation_loss_and_quality_disagree(profile, references, tmp_path):
    config = quick(profile, steps=4, checkpoint_every=1, validation_images=1)
    result = train_lora(config, profile, references, tmp_path / "run", quiet=True,
                        score_checkpoint=fake_scorer({1: 0.9, 2: 0.1, 3: 0.1, 4: 0.1}))
    losses = result.validation_losses
    lowest = min(losses, key=losses.get)
    why = result.chosen_checkpoint["why"]
    assert result.chosen_checkpoint["step"] == 1
    assert ("disagrees" in why) == (lowest != 1) and ("agrees" in why), why
    if lowest != 1:
        assert f"lowest at step {lowest}" in why


# --------------------------------------------------------------------------- LoKr and LoHa
def _lycoris_delta(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """A module's weight change as ComfyUI / A1111 compute it from the kohya (LyCORIS) file."""
    get = lambda name: parts[name].float()  # noqa: E731
    if "hada_w1_a" in parts:
        return (get("hada_w1_a") @ get("hada_w1_b")) * (get("hada_w2_a") @ get("hada_w2_b")) \
            * get("alpha") / parts["hada_w1_b"].shape[0]
    low_rank = "lokr_w2_a" in parts
    w2 = get("lokr_w2_a") @ get("lokr_w2_b") if low_rank else get("lokr_w2")
    scale = get("alpha") / parts["lokr_w2_b"].shape[0] if low_rank else 1.0
    return torch.kron(get("lokr_w1"), w2) * scale


@pytest.mark.parametrize("adapter", ["lokr", "loha"])
def test_lokr_and_loha_train_export_and_reload_bit_exactly(profile, references, tmp_path, adapter):
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tools.generation.local import generate_local
    from tools.generation.lycoris import load_lycoris_weights
    from tools.generation.sampling import SamplingSpec
    from tools.models import load_toy_world_pipeline

    config = quick(profile, steps=3, adapter=adapter, save_precision="fp32", train_text_encoder=True,
                   learning_rate=1e-2)
    result = train_lora(config, profile, references, tmp_path / "run", quiet=True)
    saved = load_file(str(result.lora_path))
    pipe = load_toy_world_pipeline()
    load_lycoris_weights(pipe, result.lora_path, "check")
    for component in ("unet", "text_encoder", "text_encoder_2"):
        loaded = get_peft_model_state_dict(getattr(pipe, component), adapter_name="check")
        prefix = component + ("." if component == "unet" else ".text_model.")
        assert loaded and all(torch.equal(value, saved[prefix + key.removeprefix("text_model.")])
                              for key, value in loaded.items()), component
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "w2" in k)  # it trained: w2 left its zero start
    # The kohya file's modules give the weight change peft applies, as LyCORIS loaders compute it.
    kohya = load_file(str(result.kohya_path))
    meta = safe_open(str(result.kohya_path), "pt").metadata()
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"]) == {"algo": adapter}
    layers = {name: layer for name, layer in pipe.unet.named_modules() if hasattr(layer, "get_delta_weight")}
    checked = 0
    for name, layer in layers.items():
        stem = "lora_unet_" + name.replace(".", "_")
        parts = {k.rpartition(".")[2]: v for k, v in kohya.items() if k.rpartition(".")[0] == stem}
        if parts:
            torch.testing.assert_close(_lycoris_delta(parts), layer.get_delta_weight("check").float(),
                                       rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked == len([k for k in kohya if k.startswith("lora_unet_") and k.endswith(".alpha")]) > 0
    # aldar's own generator draws with it.
    images = generate_local(profile, ["aldarkose"], tmp_path / "drawn", SamplingSpec(seed=1, steps=2),
                            lora_path=result.lora_path, quiet=True)
    assert images and images[0].path.is_file()


def test_dora_is_refused_with_lokr(profile):
    from tools.errors import ConfigError

    with pytest.raises(ConfigError, match="DoRA is a LoRA variant"):
        quick(profile, adapter="lokr", use_dora=True).validate()


@pytest.mark.parametrize("adapter", ["lokr", "loha"])
def test_lokr_and_loha_beat_the_base_on_key_features(tiny_settings, adapter):
    """As the LoRA's learning test (tests/test_world_learning.py): one round on the toy world, the adapter's
    images against the base model's on the references' key features."""
    from agent.rounds.policy import RulePolicy
    from agent.rounds.session import Session

    settings = tiny_settings.replace(images_per_prompt=0, target_score=1.0)
    with Session(settings, quiet=True) as session:
        # The adapter at its own default learning rate (tools.training.config.TINY_LEARNING_RATES), as
        # `aldar train --adapter` takes it.
        session.params.update(adapter=adapter,
                              learning_rate=default_train_config(session.profile, adapter).learning_rate)
        record = session.run_rounds(1, RulePolicy(bounds=session.bounds))[0]
    assert record.params["adapter"] == adapter
    lora, base = record.scores["lora"].features, record.scores["base"].features
    # The bar, on seed 42 (this fixture's). Measured leads in this very setting (bench/adapter_learning.py,
    # seeds 42/1/2, one thread, decoder5's VAE) at their 5e-3: LoKr +0.188/+0.250/+0.312, LoHa +0.234/+0.156/+0.250
    # — over the bar on every seed and on the mean.
    assert lora >= base + 0.15, (lora, base)


# --------------------------------------------------------------------------- masked loss
def _masked_references(folder: Path, sizes=((64, 64), (64, 64), (64, 64)), masked=(0, 1, 2)) -> list[tuple[Path, str]]:
    """The figure-on-background pictures with masks/ beside them (white = the dark figure)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    pairs = []
    for index, background in enumerate([(200, 60, 60), (60, 200, 60), (60, 60, 200)]):
        pixels = np.full((64, 64, 3), background, np.uint8)
        pixels[16:48, 20:44] = (30, 30, 30)
        Image.fromarray(pixels).save(folder / f"ref{index}.png")
        if index in masked:
            mask = np.zeros((64, 64), np.uint8)
            mask[16:48, 20:44] = 255
            Image.fromarray(mask).resize(sizes[index], Image.NEAREST).save(folder / "masks" / f"ref{index}.png")
        pairs.append((folder / f"ref{index}.png", CAPTIONS[index]))
    return pairs


def test_masks_move_with_their_picture_through_buckets_and_crops(tmp_path):
    from tools.training.data import load_masks, prepare_images

    folder = tmp_path / "refs"
    (folder / "masks").mkdir(parents=True)
    pixels = np.zeros((96, 160, 3), np.uint8)  # wide: bucketed and cropped
    mask = np.zeros((96, 160), np.uint8)
    pixels[:, :40] = mask[:, :40] = 255  # the character on the left edge
    Image.fromarray(pixels).save(folder / "wide.png")
    Image.fromarray(mask).save(folder / "masks" / "wide.png")
    masks, notes = load_masks([folder / "wide.png"])
    assert notes == []
    for step in (None, 8):
        image = prepare_images([(folder / "wide.png", "aldarkose")], 64, step, masks)[0]
        assert image.mask.shape[1:] == image.pixels.shape[1:]
        bright = (image.pixels.mean(0) > 0).float()  # where the white picture part landed
        assert torch.allclose(bright, (image.mask[0] > 0.5).float())


def test_an_alpha_channel_is_a_mask_and_an_opaque_one_is_not(tmp_path):
    from tools.training.data import load_masks

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[8:24, 8:24, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    Image.fromarray(np.full((32, 32, 4), 255, np.uint8), "RGBA").save(tmp_path / "opaque.png")
    masks, notes = load_masks([tmp_path / "cut.png", tmp_path / "opaque.png"])
    assert list(masks) == [tmp_path / "cut.png"] and np.asarray(masks[tmp_path / "cut.png"])[16, 16] == 255
    assert notes == ["no mask for opaque.png: trained unmasked (whole picture)"]


def test_bad_masks_are_resized_refused_or_listed_once(tmp_path):
    from tools.errors import InputError
    from tools.training.data import load_masks

    pairs = _masked_references(tmp_path / "a", sizes=((64, 64), (32, 32), (64, 64)), masked=(0, 1))
    masks, notes = load_masks([p for p, _ in pairs])
    assert len(masks) == 2 and masks[pairs[1][0]].size == (64, 64)
    assert notes == ["masks resized to their picture: ref1.png (32x32 -> 64x64)",
                     "no mask for ref2.png: trained unmasked (whole picture)"]
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a" / "masks" / "ref2.png")
    with pytest.raises(InputError, match="ref2.png is all black"):
        load_masks([p for p, _ in pairs])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a" / "nomask.png")
    with pytest.raises(InputError, match="found no mask"):
        load_masks([tmp_path / "a" / "nomask.png"])


def test_masked_loss_weighs_only_the_character(profile, tmp_path):
    """With the outside weight 0 the loss sees the character alone: two reference sets that differ only in their
    backgrounds give the same validation loss; without masks, they differ."""
    from tools.training.data import clear_latent_cache

    first = _masked_references(tmp_path / "a")
    second = _masked_references(tmp_path / "b")
    for path, _ in second:  # same figures, other backgrounds
        pixels = np.asarray(Image.open(path)).copy()
        pixels[:8] = (250, 250, 0)
        Image.fromarray(pixels).save(path)
    config = quick(profile, steps=1, masked_loss=True, bucketing=False)
    runs = {}
    for name, pairs in (("a", first), ("b", second)):
        clear_latent_cache()
        runs[name] = train_lora(config, profile, pairs, tmp_path / f"run-{name}", quiet=True)
    assert runs["a"].notes == []
    # The VAE's latents mix neighbouring pixels: the character's own latent cells stay nearly alike.
    a, b = runs["a"].validation_losses[1], runs["b"].validation_losses[1]
    plain = {name: train_lora(config.replace(masked_loss=False), profile, pairs, tmp_path / f"plain-{name}",
                              quiet=True).validation_losses[1] for name, pairs in (("a", first), ("b", second))}
    assert abs(a - b) < abs(plain["a"] - plain["b"]), (a, b, plain)
    from safetensors import safe_open

    assert safe_open(str(runs["a"].kohya_path), "pt").metadata()["ss_masked_loss"] == "True"


def test_the_normalized_masked_loss_weighs_a_small_character_as_a_whole_picture(profile, tmp_path, monkeypatch):
    """kohya's masked loss scales each picture's loss by its mask's area (the figure is 3/8 of these); normalised
    (OneTrainer's option) the weights average 1, so the step is as large as an unmasked picture's."""
    import tools.training.trainer as trainer

    pairs = _masked_references(tmp_path / "refs")
    seen: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    real = trainer.denoising_loss
    for normalize in (False, True):
        def spy(*args, weights=None, normalize=normalize, **kwargs):
            seen[normalize].append(weights)
            return real(*args, weights=weights, **kwargs)

        monkeypatch.setattr(trainer, "denoising_loss", spy)
        train_lora(quick(profile, steps=1, masked_loss=True, bucketing=False, normalize_masked_loss=normalize),
                   profile, pairs, tmp_path / f"run-{normalize}", quiet=True)
    plain, normalized = seen[False][0], seen[True][0]
    assert plain.mean(dim=(1, 2, 3)).max() < 0.6  # the character's share of the latent grid, roughly 3/8
    torch.testing.assert_close(normalized.mean(dim=(1, 2, 3)), torch.ones(len(normalized)))
    torch.testing.assert_close(normalized / normalized.amax(dim=(1, 2, 3), keepdim=True),
                               plain / plain.amax(dim=(1, 2, 3), keepdim=True))  # the same shape, rescaled


# --------------------------------------------------------------------------- caption modes
def _per_image(tops: dict[str, dict[str, str]]) -> dict:
    return {name: {c: {"top": [{"feature": f, "probability": 0.9}]} for c, f in cats.items()}
            for name, cats in tops.items()}


def test_identity_free_captions_keep_only_what_varies():
    from tools.scoring.analyzer import captions_for

    analysis = {"trigger_token": "aldarkose", "taxonomy": {"categories": {"robe": [], "face": [], "background": []}},
                "per_image": _per_image({
                    "a.png": {"robe": "orange robe", "face": "round face", "background": "steppe landscape"},
                    "b.png": {"robe": "orange robe", "face": "round face", "background": "plain background"}}),
                "captions": {"a.png": "aldarkose, orange robe, round face, steppe landscape",
                             "b.png": "aldarkose, orange robe, round face, plain background"}}
    assert captions_for(analysis, "identity-free") == {"a.png": "aldarkose, steppe landscape",
                                                      "b.png": "aldarkose, plain background"}
    assert captions_for(analysis, "full") == analysis["captions"]


def test_the_session_trains_on_the_chosen_caption_mode(tmp_path):
    from agent.rounds.params import training_dataset

    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / name)
    analysis = {"trigger_token": "aldarkose",
                "per_image": _per_image({"a.png": {"robe": "orange robe", "pose": "standing"},
                                         "b.png": {"robe": "orange robe", "pose": "sitting"}}),
                "captions": {"a.png": "aldarkose, orange robe, standing", "b.png": "aldarkose, orange robe, sitting"}}
    assert [c for _, c in training_dataset(tmp_path, analysis, [], "identity-free")] == \
        ["aldarkose, standing", "aldarkose, sitting"]
    assert [c for _, c in training_dataset(tmp_path, analysis, [])] == list(analysis["captions"].values())


# --------------------------------------------------------------------------- prior preservation
def test_the_class_prompt_leaves_out_the_trigger_and_name_and_refuses_the_trigger(profile):
    from tools.errors import ConfigError
    from tools.training.prior import class_prompt_for, default_class_prompt

    assert class_prompt_for("aldarkose, Aldar Kose, orange robe, round face", "aldarkose", "Aldar Kose") == \
        "orange robe, round face"
    assert default_class_prompt(CAPTIONS, "aldarkose") == "a person"  # the three share only the trigger
    assert default_class_prompt(CAPTIONS[:2], "aldarkose") == "blue chapan"
    with pytest.raises(ConfigError, match="contains the trigger token"):
        quick(profile, prior_preservation=True, class_prompt="a man, aldarkose style").validate()


def test_the_default_class_prompt_is_the_references_scene_and_style_without_the_character(profile):
    """DreamBooth's class ("a dog" for one dog): the analysis' context features, none of its identity traits —
    class images of the character itself taught the LoRA its traits without the trigger (bleed rose)."""
    from tools.scoring.analyzer import analyze_references
    from tools.settings import BUNDLED_REFERENCES, load_settings
    from tools.training.prior import analysis_class_prompt, with_class_prompt

    settings = load_settings(overrides={"profile": "tiny"}, environ={})
    analysis = analyze_references(BUNDLED_REFERENCES, profile, settings.taxonomy_path(), "aldarkose", "Aldar Köse",
                                  None)
    class_prompt = analysis_class_prompt(analysis)
    assert set(class_prompt.split(", ")) == {"steppe landscape", "children's book style", "smiling"}
    assert not {"round face", "narrow eyes", "thin mustache", "orange patterned robe"} & set(class_prompt.split(", "))
    config = quick(profile, prior_preservation=True)
    assert with_class_prompt(config, analysis).class_prompt == class_prompt
    assert with_class_prompt(config.replace(class_prompt="a man"), analysis).class_prompt == "a man"  # the user's
    assert with_class_prompt(quick(profile), analysis).class_prompt == ""  # no prior preservation: untouched
    assert with_class_prompt(config, {"trigger_token": "x"}).class_prompt == ""  # no taxonomy: trainer's fallback


def test_prior_preservation_draws_the_class_images_once_and_trains_beside_them(profile, references, tmp_path,
                                                                              monkeypatch):
    import tools.generation.local as local

    monkeypatch.setenv("ALDAR_CACHE", str(tmp_path / "cache"))
    calls = []
    real = local.generate_local
    monkeypatch.setattr(local, "generate_local", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    config = quick(profile, steps=2, prior_preservation=True, class_prompt="a man in a robe", num_class_images=3)
    first = train_lora(config, profile, references, tmp_path / "a", quiet=True)
    second = train_lora(config, profile, references, tmp_path / "b", quiet=True)
    assert calls == [["a man in a robe"]]  # cached by (model, prompt, seed, count): drawn once
    assert len(list((tmp_path / "cache" / "class_images").rglob("*.png"))) == 3
    assert first.validation_losses == second.validation_losses
    plain = train_lora(config.replace(prior_preservation=False), profile, references, tmp_path / "c", quiet=True)
    assert plain.validation_losses[2] != first.validation_losses[2]  # the class images are in the average
    from safetensors import safe_open

    assert safe_open(str(first.kohya_path), "pt").metadata()["ss_prior_loss_weight"] == "1"


def test_a_users_regularisation_folder_is_used_with_its_captions(profile, references, tmp_path, monkeypatch):
    import tools.generation.local as local

    monkeypatch.setattr(local, "generate_local", lambda *a, **k: pytest.fail("nothing is drawn"))
    reg = tmp_path / "reg"
    reg.mkdir()
    for index in range(2):
        Image.fromarray(np.full((64, 64, 3), 90 + index * 40, np.uint8)).save(reg / f"r{index}.png")
    (reg / "r0.txt").write_text("a man standing\n")
    from tools.training.prior import class_images

    config = quick(profile, prior_preservation=True, class_images_dir=str(reg))
    assert [c for _, c in class_images(config, profile, "a person", 8)] == ["a man standing", "a person"]
    result = train_lora(config, profile, references, tmp_path / "run", quiet=True)
    assert result.steps == 2


# --------------------------------------------------------------------------- output preservation
def test_without_trigger_takes_the_trigger_out_of_every_tag_as_whole_words():
    from tools.character import has_trigger, without_trigger

    assert without_trigger("aldarkose, round face, blue robe", "aldarkose") == "round face, blue robe"
    assert without_trigger("AldarKose style, steppe", "aldarkose") == "style, steppe"
    assert without_trigger("round face", "aldarkose") == "round face"  # nothing to take out
    assert without_trigger("aldarkose", "aldarkose") == ""
    assert without_trigger("ohwx  man, smiling", "ohwx man") == "smiling"  # a trigger of two words
    # Found as whole words only; a caption written without spaces after its commas has none to find.
    assert has_trigger("ohwx man, smiling", "ohwx man") and not has_trigger("round face,smile", "aldarkose")
    assert not has_trigger("aldarkoses robe", "aldarkose") and not has_trigger("aldarkose", " ")


def test_adapters_off_gives_the_base_model_and_restores_every_layer_and_gradient_flag(profile):
    """The preservation target's switch: inside, the UNet predicts as the base; after, every adapter layer is on
    or off as before (one the setup switched off stays off) and every weight trains as before."""
    from tools.models import load_sdxl_pipeline
    from tools.training.setup import _tuner_layers, adapters_off, lora_adapters

    pipe = load_sdxl_pipeline(profile)
    unet = pipe.unet
    size, channels = unet.config.sample_size, unet.config.in_channels
    latents = torch.randn((1, channels, size, size), generator=torch.Generator().manual_seed(0))
    embeds = torch.randn((1, 77, unet.config.cross_attention_dim), generator=torch.Generator().manual_seed(1))
    pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
    extra = {"text_embeds": torch.zeros((1, pooled)), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}

    def predict() -> torch.Tensor:
        with torch.no_grad():
            return unet(latents, torch.tensor([500]), embeds, added_cond_kwargs=extra).sample

    base = predict()
    with lora_adapters(pipe, quick(profile)) as modules:
        for param in (p for p in unet.parameters() if p.requires_grad):
            param.data.add_(0.05)  # a LoRA that changes the picture
        layers = _tuner_layers(unet)
        layers[0].enable_adapters(False)  # as setup leaves a layer that holds only another adapter
        before = [layer.disable_adapters for layer in layers], [p.requires_grad for p in unet.parameters()]
        assert not torch.equal(predict(), base)
        with adapters_off(modules.values()):
            assert torch.equal(predict(), base)
        assert ([layer.disable_adapters for layer in layers], [p.requires_grad for p in unet.parameters()]) == before


def _change_from_base(lora_path: Path, profile, caption: str) -> float:
    """Mean squared change the LoRA makes to the UNet's noise prediction for ``caption`` (fixed latents, noise level)."""
    from tests.test_trainer_features import fresh_pipeline
    from tools.training.data import encode_prompts

    pipe = fresh_pipeline(profile)
    pipe.load_lora_weights(str(lora_path))
    embeds, pooled = encode_prompts([caption], [pipe.tokenizer, pipe.tokenizer_2],
                                    [pipe.text_encoder, pipe.text_encoder_2], torch.device("cpu"))
    size = pipe.unet.config.sample_size
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((4, pipe.unet.config.in_channels, size, size), generator=generator)
    embeds, pooled = embeds.expand(4, -1, -1), pooled.expand(4, -1)
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * 4, dtype=torch.float32)
    timesteps = torch.tensor([200, 400, 600, 800])

    def predict() -> torch.Tensor:
        with torch.no_grad():
            return pipe.unet(latents, timesteps, embeds,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample

    with_lora = predict()
    pipe.disable_lora()
    return float(((with_lora - predict()) ** 2).mean())


def test_output_preservation_keeps_the_lora_out_of_captions_without_its_trigger(profile, tmp_path):
    """The lever's promise, on the bundled references with their analysis' captions (60 steps): trained with it,
    the LoRA changes the base's prediction for a caption without the trigger less than half as much as a plain LoRA
    does, and its change with the trigger stands further above that than the plain LoRA's (measured: 0.0029 vs
    0.0068 without; 1.9x vs 1.6x with the trigger)."""
    from safetensors import safe_open

    from tools.settings import BUNDLED_REFERENCES

    traits = ["skullcap, orange patterned robe, children's book style, friendly, steppe landscape",
              "skullcap, orange patterned robe, 2D illustration, smiling, plain background",
              "topknot, orange patterned robe, 2D illustration, smiling, steppe landscape",
              "skullcap, orange patterned robe, children's book style, friendly, plain background",
              "topknot, orange patterned robe, children's book style, smiling, steppe landscape"]
    dataset = [(BUNDLED_REFERENCES / f"aldar{index + 1}.png",
                f"aldarkose, round face, narrow eyes, thin mustache, {text}") for index, text in enumerate(traits)]
    config = quick(profile, steps=60)
    plain = train_lora(config, profile, dataset, tmp_path / "plain", quiet=True)
    kept = train_lora(config.replace(output_preservation=True), profile, dataset, tmp_path / "kept", quiet=True)
    with_trigger = dataset[0][1]
    without = with_trigger.removeprefix("aldarkose, ")
    plain_without, kept_without = (_change_from_base(r.lora_path, profile, without) for r in (plain, kept))
    plain_with, kept_with = (_change_from_base(r.lora_path, profile, with_trigger) for r in (plain, kept))
    assert kept_without < 0.5 * plain_without
    assert kept_with / kept_without > plain_with / plain_without
    assert safe_open(str(kept.kohya_path), "pt").metadata()["aldar_output_preservation_weight"] == "1"
    assert safe_open(str(plain.kohya_path), "pt").metadata()["aldar_output_preservation_weight"] == "0"


def test_output_preservation_refuses_a_caption_without_the_trigger_before_writing(profile, references, tmp_path):
    from tools.errors import ConfigError, InputError

    untriggered = [*references[:2], (references[2][0], "riding, donkey")]
    with pytest.raises(InputError, match=r"ref2.png's has none \('riding, donkey'\)"):
        train_lora(quick(profile, output_preservation=True), profile, untriggered, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="output_preservation_weight"):
        quick(profile, output_preservation=True, output_preservation_weight=0.0).validate()
    with pytest.raises(ConfigError, match="needs a trigger word"):
        quick(profile, output_preservation=True, trigger_token=" ").validate()
