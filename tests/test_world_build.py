"""The toy world's build (``python -m tools.world.build``) on a miniature recipe: a stage interrupted by
Ctrl-C saves a checkpoint, a rerun continues from it, and the result is the uninterrupted run's, bit for
bit — batches and noise are functions of (seed, step). Second passes start from the first passes' states;
the committed weights can seed a cache; the export pairs the UNet with the text tower it trained on."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tools.world import recipe as world_recipe
from tools.world import runners
from tools.world.checkpoints import Build, fresh_clip, load_trained_clip, locked_encoder
from tools.world.export import export, seed_from_weights
from tools.world.runners import run_stage


def _steps(recipe: world_recipe.Recipe, **steps: int) -> world_recipe.Recipe:
    return recipe.changed(**{name: dict(steps=count) for name, count in steps.items()})


# The recipe in miniature: small splits, batches of 8 pictures (CLIP) or 4 (VAE, UNet), few steps.
MINI = _steps(world_recipe.Recipe(train_split=(1, 160), unet_split=(2, 96), heldout_split=(9, 8)).changed(
    **{stage.name: dict(batch={"model": 8, "vae": 4, "unet": 4, "text": 4}[stage.model])
       for stage in world_recipe.GRAPH if stage.model}).changed(clip=dict(lock_step=3), vae=dict(lock_step=2)),
    clip=6, vae=4, decoder=3, decoder2=3, unet=4)


def _prepared(tmp_path, name: str, recipe=MINI) -> Build:
    build = Build(tmp_path / name, recipe, weights=tmp_path / name / "weights")
    run_stage(build, "data")
    run_stage(build, "tokenizer")
    return build


def _modules(build: Build, stage: str) -> dict:
    return torch.load(build.checkpoint_path(stage), map_location="cpu", weights_only=False)["modules"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_stage_resumes_to_exactly_the_uninterrupted_weights(tmp_path, monkeypatch):
    straight = _prepared(tmp_path, "straight")
    run_stage(straight, "vae")

    interrupted = _prepared(tmp_path, "interrupted")
    real_unit_range, calls = runners.to_unit_range, []

    def ctrl_c_at_step_3(pixels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_unit_range(pixels)

    monkeypatch.setattr(runners, "to_unit_range", ctrl_c_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_stage(interrupted, "vae")
    state = torch.load(interrupted.checkpoint_path("vae"), map_location="cpu", weights_only=False)
    assert state["step"] == 2  # the two finished steps are kept
    monkeypatch.setattr(runners, "to_unit_range", real_unit_range)
    run_stage(interrupted, "vae")  # the rerun continues at step 2

    assert _same(_modules(straight, "vae")["vae"], _modules(interrupted, "vae")["vae"])


def test_a_changed_recipe_starts_the_stage_afresh_and_the_second_pass_needs_the_first(tmp_path, capsys):
    build = _prepared(tmp_path, "cache")
    run_stage(build, "vae")
    with pytest.raises(RuntimeError, match="decoder stage is at step 0 of 3: finish it first"):
        torch.save({"step": 0}, build.checkpoint_path("decoder"))
        run_stage(build, "decoder2")
    build.checkpoint_path("decoder").unlink()
    run_stage(build, "decoder")
    run_stage(build, "decoder2")
    first, second = _modules(build, "decoder")["vae"], _modules(build, "decoder2")["vae"]
    assert not _same(first, second)  # the second pass trained on
    assert all(torch.equal(first[k], second[k]) for k in first if k.startswith(("encoder.", "quant_conv.")))

    changed = Build(build.cache, MINI.changed(decoder2=dict(lr=1e-4)), weights=build.weights)
    run_stage(changed, "decoder2")
    assert "the recipe changed since the checkpoint: starting afresh" in capsys.readouterr().out


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_the_committed_weights_seed_a_cache_that_exports_them_unchanged(tmp_path):
    from tools.world import WEIGHTS_DIR

    build = Build(tmp_path / "cache", MINI)  # weights: the committed folder (read only here)
    marked = seed_from_weights(build)
    assert {"textneg", "decoder", "retune", "retune2", "decoder2", "hardneg2"} <= set(marked)
    # The tokenizer taken from the committed tokenizer.json tokenises as the committed one.
    from tools.models import load_toy_world_clip

    committed = load_toy_world_clip()[1]
    caption = "aldarkose, round face, thin mustache, orange patterned robe, steppe landscape"
    assert build.tokenizer()(caption).input_ids == committed(caption).input_ids
    with pytest.raises(RuntimeError, match="already holds checkpoints"):
        seed_from_weights(build)
    # The stages the build log records are finished (only those after them are left to train), and the
    # export gives back the committed weights bit for bit.
    for stage in marked:
        assert torch.load(build.checkpoint_path(stage), weights_only=False)["step"] == MINI.stage(stage).steps
    assert not any(build.checkpoint_path(s).is_file() for s in set(world_recipe.TRAINING_STAGES) - set(marked))
    assert export(Build(build.cache, MINI, weights=tmp_path / "weights")) == ["clip", "sdxl"]
    for model in ("clip/model.safetensors", "sdxl/unet/diffusion_pytorch_model.safetensors",
                  "sdxl/vae/diffusion_pytorch_model.safetensors", "sdxl/text_encoder/model.safetensors",
                  "sdxl/text_encoder_2/model.safetensors"):
        mine, theirs = _tensors(tmp_path / "weights" / model), _tensors(WEIGHTS_DIR / model)
        assert _same(mine, theirs), model


def test_weights_of_the_first_build_seed_a_cache_whose_later_passes_continue_them(tmp_path):
    import shutil

    from tools.world import WEIGHTS_DIR

    first_build = tmp_path / "first"
    shutil.copytree(WEIGHTS_DIR, first_build)
    log = json.loads((first_build / "build_log.json").read_text())
    for stage in set(world_recipe.TRAINING_STAGES) - set(world_recipe.FIRST_BUILD):
        log.pop(stage, None)
    (first_build / "build_log.json").write_text(json.dumps(log))

    recipe = _steps(MINI, retune2=2, decoder2=2, hardneg2=2, textneg2=2, retune3=2, hardneg3=2, vae2=2, retune4=2,
                    hardneg4=2, decoder3=2, decoder4=2, retune5=2)
    build = Build(tmp_path / "cache", recipe, weights=first_build)
    assert set(seed_from_weights(build)) == set(world_recipe.FIRST_BUILD)
    seeded_unet, seeded_clip = _modules(build, "retune")["ema"], _modules(build, "textneg")["model"]
    run_stage(build, "retune2")
    run_stage(build, "decoder2")
    run_stage(build, "hardneg2")
    after, image_tower_on = _modules(build, "retune2")["ema"], _modules(build, "hardneg2")["model"]
    assert seeded_unet.keys() == after.keys() and not _same(seeded_unet, after)
    assert all(torch.equal(seeded_clip[k], image_tower_on[k]) for k in seeded_clip if k.startswith("text_"))
    assert not all(torch.equal(seeded_clip[k], image_tower_on[k]) for k in seeded_clip if k.startswith("vision_"))
    with pytest.raises(RuntimeError, match="the textneg2 stage is at step 0 of 2: finish it first"):
        torch.save({"step": 0}, build.checkpoint_path("textneg2"))
        run_stage(build, "retune3")  # the third UNet pass needs the text tower it trains on
    build.checkpoint_path("textneg2").unlink()

    # Third passes: both towers again (the text tower moves), then the UNet onto the new text tower and the
    # image tower alone on it.
    run_stage(build, "textneg2")
    with pytest.raises(RuntimeError, match="differs from the text tower retune2 trained on: train the UNet on the new"):
        export(Build(build.cache, recipe, weights=tmp_path / "too-early"))
    assert not (tmp_path / "too-early" / "clip").exists()  # a text tower without its UNet is never exported
    run_stage(build, "retune3")
    run_stage(build, "hardneg3")
    both_towers, third_unet = _modules(build, "textneg2")["model"], _modules(build, "retune3")["ema"]
    last_clip = _modules(build, "hardneg3")["model"]
    assert not all(torch.equal(image_tower_on[k], both_towers[k]) for k in both_towers if k.startswith("text_"))
    assert all(torch.equal(both_towers[k], last_clip[k]) for k in last_clip if k.startswith("text_"))
    assert not _same(after, third_unet)

    # The export carries the latest UNet with the text tower it trained on, in the scorer's CLIP and the pipeline.
    exported = Build(build.cache, recipe, weights=tmp_path / "weights")
    assert export(exported) == ["clip", "sdxl"]
    clip = _tensors(tmp_path / "weights" / "clip" / "model.safetensors")
    encoder_2 = _tensors(tmp_path / "weights" / "sdxl" / "text_encoder_2" / "model.safetensors")
    unet = _tensors(tmp_path / "weights" / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors")
    name, vision = "text_model.final_layer_norm.weight", "vision_model.post_layernorm.weight"
    assert torch.equal(clip[name], encoder_2[name]) and torch.equal(clip[name], both_towers[name].half())
    assert torch.equal(clip[vision], last_clip[vision].half())
    assert not all(torch.equal(clip[k], both_towers[k].half()) for k in clip if k.startswith("vision_"))
    assert all(torch.equal(unet[k], third_unet[k].half()) for k in unet)
    log = json.loads((tmp_path / "weights" / "build_log.json").read_text())
    assert "taken from the committed fp16 weights" in log["seeded_from_weights"]

    # Fourth passes: encoder and decoder together (the encoder moves, then is locked), the UNet onto the new
    # latents, the image tower once more. A VAE whose encoder the UNet never learnt is never exported.
    run_stage(build, "vae2")
    before, joint = _modules(build, "decoder2")["vae"], _modules(build, "vae2")["vae"]
    encoder_keys = [k for k in joint if k.startswith(("encoder.", "quant_conv."))]
    assert not all(torch.equal(before[k], joint[k]) for k in encoder_keys)
    build.cache.joinpath("vae2_encoder.pt").unlink()  # killed between the last checkpoint and the lock
    assert all(torch.equal(locked_encoder(build, "vae2")[k.split(".", 1)[0]][k.split(".", 1)[1]], joint[k])
               for k in encoder_keys)
    with pytest.raises(RuntimeError, match="the VAE's encoder is vae2's but retune3 learnt the latents of vae's"):
        export(Build(build.cache, recipe, weights=tmp_path / "vae-too-early"))
    assert not (tmp_path / "vae-too-early" / "clip").exists()
    run_stage(build, "retune4")
    run_stage(build, "hardneg4")
    assert build.cache.joinpath("unet_latent_moments_vae2.pt").is_file()  # retune4 learnt vae2's latents
    fourth_unet = _modules(build, "retune4")["ema"]
    assert not _same(third_unet, fourth_unet)
    assert export(Build(build.cache, recipe, weights=tmp_path / "fourth")) == ["clip", "sdxl"]
    vae = _tensors(tmp_path / "fourth" / "sdxl" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(vae[k], joint[k].half()) for k in vae)
    unet = _tensors(tmp_path / "fourth" / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet[k], fourth_unet[k].half()) for k in unet)

    # Fifth and sixth passes: the decoder alone on vae2's locked encoder, each moving it on, so the UNet's latents
    # stay and it exports as is.
    previous = joint
    for stage in ("decoder3", "decoder4"):
        run_stage(build, stage)
        trained = _modules(build, stage)["vae"]
        assert all(torch.equal(joint[k], trained[k]) for k in encoder_keys)
        assert not all(torch.equal(previous[k], trained[k]) for k in trained if k.startswith("decoder."))
        assert export(Build(build.cache, recipe, weights=tmp_path / stage)) == ["clip", "sdxl"]
        vae = _tensors(tmp_path / stage / "sdxl" / "vae" / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(vae[k], trained[k].half()) for k in vae)
        previous = trained

    # Seventh pass: the UNet again, the head weighted up in its latent loss, on the same text tower and latents.
    run_stage(build, "retune5")
    fifth_unet = _modules(build, "retune5")["ema"]
    assert not _same(fourth_unet, fifth_unet)
    assert export(Build(build.cache, recipe, weights=tmp_path / "seventh")) == ["clip", "sdxl"]
    unet = _tensors(tmp_path / "seventh" / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet[k], fifth_unet[k].half()) for k in unet)


def test_the_novel_stage_teaches_the_scorers_clip_alone_and_its_weights_seed_a_cache_again(tmp_path):
    """``novel`` trains both towers from hardneg4 on the train and novel splits; the export gives the scorer
    those towers and keeps the pipeline's text encoders on the text tower its UNet trained on (textneg2's, unless
    the tried retune6 ran); a cache seeded from those weights gives both back bit for bit."""
    from tools.world import WEIGHTS_DIR

    recipe = _steps(replace(MINI, novel_split=(3, 24)), novel=2)
    build = Build(tmp_path / "cache", recipe)  # weights: the committed folder (read only here)
    seed_from_weights(build)
    # The committed weights hold the scorer-only stages (and would hold retune6, the UNet on their text tower, were
    # it committed): the build as it stood before them.
    _forget(build, *world_recipe.SCORER_ONLY_STAGES, "retune6")
    before = _modules(build, "hardneg4")["model"]
    run_stage(build, "novel")
    after = _modules(build, "novel")["model"]
    for tower in ("text_", "vision_"):
        assert not all(torch.equal(before[k], after[k]) for k in after if k.startswith(tower)), tower

    assert export(Build(build.cache, recipe, weights=tmp_path / "weights")) == ["clip", "sdxl"]
    clip = _tensors(tmp_path / "weights" / "clip" / "model.safetensors")
    assert all(torch.equal(clip[k], after[k].half()) for k in clip)
    for part in ("sdxl/text_encoder_2/model.safetensors", "sdxl/unet/diffusion_pytorch_model.safetensors"):
        assert _same(_tensors(tmp_path / "weights" / part), _tensors(WEIGHTS_DIR / part)), part

    again = Build(tmp_path / "cache2", recipe, weights=tmp_path / "weights")
    assert "novel" in seed_from_weights(again)
    pipeline_text = _tensors(tmp_path / "weights" / "sdxl" / "text_encoder_2" / "model.safetensors")
    textneg2 = _modules(again, "textneg2")["model"]
    assert all(torch.equal(textneg2[k].half(), pipeline_text[k]) for k in pipeline_text if k in textneg2)
    assert export(Build(again.cache, recipe, weights=tmp_path / "again")) == ["clip", "sdxl"]
    for part in ("clip/model.safetensors", "sdxl/text_encoder_2/model.safetensors"):
        assert _same(_tensors(tmp_path / "again" / part), _tensors(tmp_path / "weights" / part)), part


def _forget(build: Build, *stages: str) -> None:
    """The cache as if ``stages`` had never run: their checkpoints and build-log entries gone."""
    for stage in stages:
        build.checkpoint_path(stage).unlink(missing_ok=True)
    log = json.loads((build.cache / "build_log.json").read_text())
    (build.cache / "build_log.json").write_text(json.dumps({k: v for k, v in log.items() if k not in stages}))


def test_retune6_moves_the_unet_onto_novel3s_text_tower_and_the_pipeline_reads_the_scorers_words(tmp_path):
    """``retune6`` fine-tunes the UNet from retune4's EMA on novel3's text tower (its own split: no novel value
    drawn); the export then gives the pipeline's text encoders the scorer's text tower, and retune6's UNet."""
    recipe = _steps(MINI, retune6=2)
    build = Build(tmp_path / "cache", recipe)  # weights: the committed folder (read only here)
    seed_from_weights(build)
    _forget(build, "retune6", "unknown_words")  # unknown_words trained textneg2's tower, which retune6 leaves
    run_stage(build, "retune6")
    sixth = _modules(build, "retune6")["ema"]
    assert not _same(sixth, _modules(build, "retune4")["ema"])
    assert export(Build(build.cache, recipe, weights=tmp_path / "weights")) == ["clip", "sdxl"]
    clip = _tensors(tmp_path / "weights" / "clip" / "model.safetensors")
    text = _tensors(tmp_path / "weights" / "sdxl" / "text_encoder_2" / "model.safetensors")
    assert all(torch.equal(text[k], clip[k]) for k in text)  # text_model.* and text_projection: the scorer's
    unet = _tensors(tmp_path / "weights" / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet[k], sixth[k].half()) for k in unet)


def test_novel3_trains_the_text_tower_alone_from_hardneg4s_and_holds_the_old_values_words(tmp_path):
    """``novel3`` keeps novel2's image tower and logit scale bit for bit, starts its text tower from hardneg4's
    (the committed scorer's before the novel values) and trains it; the anchor holds the old values' sentences
    near hardneg4's embedding of them while the novel words move. The export gives the scorer novel3's CLIP."""
    from tools.world.attributes import ATTRIBUTES, NOVEL_ATTRIBUTES

    recipe = _steps(replace(MINI, novel_split=(3, 24)), novel=2, novel2=2, novel3=3)
    build = Build(tmp_path / "cache", recipe)
    seed_from_weights(build)
    for stage in world_recipe.SCORER_ONLY_STAGES:
        build.checkpoint_path(stage).unlink(missing_ok=True)
    for stage in ("novel", "novel2", "novel3"):
        run_stage(build, stage)
    hardneg4, novel2, novel3 = (_modules(build, s)["model"] for s in ("hardneg4", "novel2", "novel3"))
    image = [k for k in novel3 if not k.startswith(("text_model.", "text_projection."))]
    assert all(torch.equal(novel3[k], novel2[k]) for k in image)  # the image tower and the logit scale
    assert not all(torch.equal(novel3[k], hardneg4[k]) for k in novel3 if k.startswith("text_"))

    def sentences(model_state, values):
        model, tokenizer = fresh_clip(build)
        model.load_state_dict(model_state)
        tokens = tokenizer(list(values), padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return torch.nn.functional.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)

    old = [v for values in ATTRIBUTES.values() for v in values]
    novel = [v for values in NOVEL_ATTRIBUTES.values() for v in values]
    moved_old = 1 - (sentences(novel3, old) * sentences(hardneg4, old)).sum(-1)
    moved_novel = 1 - (sentences(novel3, novel) * sentences(hardneg4, novel)).sum(-1)
    assert moved_old.mean() < moved_novel.mean()  # the anchor holds the old words more than the new ones
    assert export(Build(build.cache, recipe, weights=tmp_path / "weights")) == ["clip", "sdxl"]
    clip = _tensors(tmp_path / "weights" / "clip" / "model.safetensors")
    assert all(torch.equal(clip[k], novel3[k].half()) for k in clip)


def test_decoder5_trains_the_decoder_alone_on_batches_mixing_the_novel_split_and_exports_only_the_decoder(
        tmp_path, monkeypatch):
    """``decoder5`` goes on from decoder4 on vae2's locked encoder with ``share`` of each batch from the novel split
    (rendered by the stage): the decoder moves, the encoder stays bit for bit, and the export changes the
    committed VAE's decoder tensors only, so the latents the UNet learnt stay as they are."""
    from tools.world import WEIGHTS_DIR

    recipe = _steps(replace(MINI, novel_split=(3, 24)), decoder5=2)
    build = Build(tmp_path / "cache", recipe)  # weights: the committed folder (read only here)
    seed_from_weights(build)
    build.checkpoint_path("decoder5").unlink(missing_ok=True)  # the committed weights may already hold it
    from tools.world import dataset

    drawn, weight_map = [], dataset.head_weight_map

    def head_weight_map(characters, size, weight):  # each step's batch, as the loss weighs it
        drawn.append(characters)
        return weight_map(characters, size, weight)

    monkeypatch.setattr(dataset, "head_weight_map", head_weight_map)
    run_stage(build, "decoder5")
    assert build.split_path("novel").is_file()
    novel = {json.dumps(c.as_dict(), sort_keys=True) for c in build.load_split("novel").characters}
    share = round(recipe.stage("decoder5").batch * recipe.stage("decoder5").share)
    assert len(drawn) == 2 and all(sum(json.dumps(c.as_dict(), sort_keys=True) in novel for c in batch) == share
                                   for batch in drawn)
    before, after = _modules(build, "decoder4")["vae"], _modules(build, "decoder5")["vae"]
    encoder_keys = [k for k in after if k.startswith(("encoder.", "quant_conv."))]
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)
    assert not all(torch.equal(before[k], after[k]) for k in after if k.startswith("decoder."))
    assert export(Build(build.cache, recipe, weights=tmp_path / "weights")) == ["clip", "sdxl"]
    part = "sdxl/vae/diffusion_pytorch_model.safetensors"
    mine, committed = _tensors(tmp_path / "weights" / part), _tensors(WEIGHTS_DIR / part)
    assert all(torch.equal(mine[k], committed[k]) for k in mine if not k.startswith(("decoder.", "post_quant_conv.")))
    assert all(torch.equal(mine[k], after[k].half()) for k in mine)
    for part in ("sdxl/unet/diffusion_pytorch_model.safetensors", "sdxl/text_encoder_2/model.safetensors",
                 "clip/model.safetensors"):
        assert _same(_tensors(tmp_path / "weights" / part), _tensors(WEIGHTS_DIR / part)), part


def test_the_stage_graph_is_the_committed_build_log():
    """The stage records (GRAPH) against weights/build_log.json, what built the committed weights: the same
    stages (the tried ones aside), each run to its record's steps, and every stage's inputs built before it."""
    from tools.world import WEIGHTS_DIR

    log = json.loads((WEIGHTS_DIR / "build_log.json").read_text(encoding="utf-8"))
    recipe = world_recipe.Recipe()
    committed = [stage.name for stage in world_recipe.GRAPH if stage.model and not stage.tried]
    logged = [name for name, entry in log.items() if isinstance(entry, dict) and "steps" in entry]
    assert sorted(logged) == sorted(committed)
    assert all(log[name]["steps"] == recipe.stage(name).steps for name in committed)
    order = [stage.name for stage in world_recipe.GRAPH]
    for stage in world_recipe.GRAPH:
        assert stage.kind in runners.RUNNERS, stage.name
        assert not stage.model or min(stage.steps, stage.lr, stage.batch, stage.warmup) > 0, stage.name
        for source in (stage.after, stage.text_tower, stage.latents, stage.anchor):
            assert source is None or order.index(source) < order.index(stage.name), (stage.name, source)
    # Its derived tables: the UNet passes' text towers and latents, the locked encoders, the seeds' offsets.
    assert {s.name: (s.text_tower, s.latents) for s in world_recipe.GRAPH if s.model == "unet"} == {
        "unet": ("clip", "vae"), "retune": ("textneg", "vae"), "retune2": ("textneg", "vae"),
        "retune3": ("textneg2", "vae"), "retune4": ("textneg2", "vae2"), "retune5": ("textneg2", "vae2"),
        "retune6": ("novel3", "vae2")}
    assert world_recipe.ENCODER_LOCKS == {"vae": "vae_encoder.pt", "vae2": "vae2_encoder.pt"}
    assert [world_recipe.batch_seed(recipe, recipe.stage(name)) // world_recipe.SECOND_PASS_SEED_OFFSET
            for name in ("clip", "hardneg2", "decoder3", "retune4", "retune5", "novel2")] == [0, 1, 2, 3, 4, 1]


def test_the_stage_records_resolve_to_the_settings_that_built_the_committed_weights():
    """tests/world_stage_settings.json: every stage's settings (steps, rate, batch, warm-up, lock step, original
    sizes, noise offset, loss weights, batch seed, inputs) as the flat Recipe of 94d6f6c resolved them from the
    recipe build_log.json records, taken before the records replaced it. The records resolve to the same, so a
    rebuild from them trains the committed weights again (a miniature build of every stage gave the same
    tensors, bit for bit, before and after)."""
    from pathlib import Path

    from tools.world import WEIGHTS_DIR

    snapshot = json.loads((Path(__file__).parent / "world_stage_settings.json").read_text(encoding="utf-8"))
    log = json.loads((WEIGHTS_DIR / "build_log.json").read_text(encoding="utf-8"))
    if "stages" in log["recipe"]:  # exported by the records' build: the resolved recipe itself
        expected = log["recipe"]
    else:  # exported by the flat Recipe: its code resolved it into the snapshot
        assert snapshot["recipe"] == log["recipe"]
        expected = {key: snapshot[key] for key in ("seed", "splits", "stages")}
    assert world_recipe.resolved(world_recipe.Recipe()) == expected


def test_a_changed_record_restarts_its_stage_and_the_stages_built_on_it_only():
    recipe = world_recipe.Recipe()
    changed = recipe.changed(textneg=dict(lr=1e-3))
    restarted = {name for name in world_recipe.STAGE
                 if world_recipe.recipe_key(changed, name) != world_recipe.recipe_key(recipe, name)}
    assert restarted == {"textneg", "retune", "retune2", "hardneg2", "textneg2", "retune3", "hardneg3", "retune4",
                         "hardneg4", "retune5", "novel", "novel2", "novel3", "retune6", "unknown_words"}
    with pytest.raises(ValueError, match="no stage retune9 in the build"):
        recipe.changed(retune9=dict(steps=1))
    with pytest.raises(ValueError, match="after shape the graph: change GRAPH, not a recipe"):
        recipe.changed(retune2=dict(after="unet"))


def test_a_stage_whose_inputs_are_missing_stops_with_one_line(tmp_path, capsys):
    from tools.world.build import main

    args = ["--cache", str(tmp_path / "cache"), "--weights", str(tmp_path / "weights")]
    assert main(["--stage", "clip", *args]) == 2
    assert "clip: stopped: the train split is not rendered" in capsys.readouterr().out
    assert main(["--stage", "vision", *args]) == 2
    assert f"vision: stopped: the clip stage has no checkpoint in {tmp_path / 'cache'}: run it first" in capsys.readouterr().out


def test_unknown_words_trains_only_the_rows_no_world_text_reads_and_the_export_gives_them_to_the_pipeline(
        tmp_path, monkeypatch):
    """``unknown_words`` starts from textneg2's text tower (the committed UNet's) and moves only embedding rows
    of tokens no world text uses: every other weight and every known token's row stay bit for bit, so a known
    prompt embeds exactly as before. The export gives both pipeline encoders those rows, and refuses a stage
    trained on another text tower than the UNet's."""
    from tools.world import export as world_export
    from tools.world.nets import text_towers
    from tools.world.unknown_words import known_tokens

    recipe = _steps(MINI, unknown_words=4)
    build = Build(tmp_path / "cache", recipe)  # weights: the committed folder (read only here)
    seed_from_weights(build)
    _forget(build, "unknown_words")
    run_stage(build, "unknown_words")
    trained = _modules(build, "unknown_words")["text"]
    clip = load_trained_clip(build, "textneg2")[0]
    start = text_towers(clip)[1].state_dict()
    key = "text_model.embeddings.token_embedding.weight"
    assert all(torch.equal(trained[k], start[k]) for k in start if k != key)
    moved = (trained[key] != start[key]).any(dim=1).nonzero().flatten().tolist()
    known = known_tokens(runners.tokenizer_corpus(build, recipe.stage("tokenizer")), build.tokenizer())
    assert moved and not set(moved) & known
    tokenizer = build.tokenizer()
    prompt = tokenizer("aldarkose, round face, thin mustache, orange patterned robe, steppe landscape",
                       padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert set(prompt.flatten().tolist()) <= known
    _, before = text_towers(clip)
    after = text_towers(clip)[1]
    after.load_state_dict(trained)
    with torch.no_grad():
        assert torch.equal(before(prompt, output_hidden_states=True).hidden_states[-2],
                           after(prompt, output_hidden_states=True).hidden_states[-2])

    assert export(Build(build.cache, recipe, weights=tmp_path / "weights")) == ["clip", "sdxl"]
    for encoder, name in (("text_encoder", "embeddings.token_embedding.weight"), ("text_encoder_2", key)):
        exported = _tensors(tmp_path / "weights" / "sdxl" / encoder / "model.safetensors")
        assert torch.equal(exported[name], trained[key].half()), encoder

    refusal = "unknown_words trained another text tower than the one retune4 learnt"
    elsewhere = replace(world_recipe.STAGE["unknown_words"], after="novel3")
    monkeypatch.setitem(world_export.STAGE, "unknown_words", elsewhere)
    with pytest.raises(RuntimeError, match=refusal):
        export(Build(build.cache, recipe, weights=tmp_path / "refused"))
    monkeypatch.undo()
    textneg2 = torch.load(build.checkpoint_path("textneg2"), weights_only=False)  # as if textneg2 had trained again
    textneg2["modules"]["model"]["text_projection.weight"] += 1e-3
    torch.save(textneg2, build.checkpoint_path("textneg2"))
    with pytest.raises(RuntimeError, match=f"{refusal} .textneg2's as it is now.: delete .*unknown_words.pt"):
        export(Build(build.cache, recipe, weights=tmp_path / "refused"))
    assert not list((tmp_path / "refused").glob("*"))  # raised before writing anything
