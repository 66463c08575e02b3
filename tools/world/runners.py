"""One runner per kind of stage (``RUNNERS``): each reads its stage record (``tools.world.recipe.Stage``) and
trains through the shared ``Trainer``. ``run_stage(build, name)`` runs one stage of ``build.recipe``."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import torch

from tools.atomic import atomic_write
from tools.models import SDXL_SCHEDULER_CONFIG  # SDXL base's noise schedule: the world's UNet trains and samples on it
from tools.world.attributes import ATTRIBUTES, sentence_caption, tag_caption
from tools.world.checkpoints import (Build, Trainer, fresh_clip, load_locked_clip, load_trained_clip,
                                     load_trained_vae, lock_text_tower, lock_vae_encoder, locked_encoder,
                                     require_finished)
from tools.world.dataset import WorldSplit, render_split, to_unit_range
from tools.world.nets import (ENCODER_PARTS, IMAGE_TOWER_PARTS, RESOLUTION, TEXT_TOWER_PARTS, cap_logit_scale,
                              clip_pixels, encode_captions, new_unet, new_vae, text_towers)
from tools.world.recipe import Stage, batch_seed
from tools.world.tokenizer import train_clip_bpe
from tools.world.unknown_words import train_unknown_words


def run_stage(build: Build, name: str) -> None:
    """Run the stage ``name`` of ``build.recipe`` with its kind's runner."""
    stage = build.recipe.stage(name)
    RUNNERS[stage.kind](build, stage)


# --------------------------------------------------------------------------- data and tokenizer
def run_data(build: Build, stage: Stage) -> None:
    recipe = build.recipe
    for name, (seed, count), without in (("train", recipe.train_split, False), ("unet", recipe.unet_split, True),
                                         ("heldout", recipe.heldout_split, False)):
        render_split_file(build, name, seed, count, without_signature=without)


def render_split_file(build: Build, name: str, seed: int, count: int, without_signature: bool = False,
                      novel: bool = False) -> None:
    """Render a split into the cache once (``render_split``'s arguments), atomically, recording its speed."""
    path = build.split_path(name)
    if path.is_file():
        return
    started = time.process_time()
    split = render_split(seed, count, RESOLUTION, without_signature=without_signature, novel=novel,
                         progress=lambda done, total: build.log("data", f"{name}: {done}/{total}"))
    characters = json.dumps([{k: v for k, v in c.as_dict().items() if k != "labels"} for c in split.characters])

    def write(tmp) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would add ".npz" to a staging name
            np.savez(handle, pixels=split.pixels, characters=np.array(characters))

    atomic_write(path, write)
    seconds = time.process_time() - started
    build.record("data", **{name: {"split_seed": seed, "pictures": count, "cpu_seconds": round(seconds, 1),
                                   "pictures_per_minute": round(count / seconds * 60)}})
    build.log("data", f"{name}: {count} pictures in {seconds:.0f} s")


def tokenizer_corpus(build: Build, stage: Stage) -> list[str]:
    """The world's captions, the taxonomy's phrases in the analyzer's templates, and the product's prompts."""
    from tools.scoring.taxonomy import load_taxonomy
    from tools.settings import BUNDLED_TAXONOMY, Settings

    rng = random.Random(batch_seed(build.recipe, stage))
    split = build.load_split("train")
    texts = []
    for character in split.characters[:20_000]:
        texts.append(tag_caption(character, rng, keep=1.0))
        texts.append(sentence_caption(character, rng))
    taxonomy = load_taxonomy(BUNDLED_TAXONOMY)
    for descriptions in ATTRIBUTES.values():
        for description in descriptions:
            texts += taxonomy.fill(description) * 50
    settings = Settings()
    texts += [settings.test_prompt, settings.negative_prompt, settings.trigger_token, settings.character_name] * 50
    return texts


def run_tokenizer(build: Build, stage: Stage) -> None:
    if (build.tokenizer_dir / "merges.txt").is_file():
        return
    train_clip_bpe(tokenizer_corpus(build, stage), build.tokenizer_dir)
    tokenizer = build.tokenizer()
    build.record("tokenizer", vocab_size=len(tokenizer.get_vocab()))
    build.log("tokenizer", f"vocabulary of {len(tokenizer.get_vocab())} tokens")


def run_unknown_words(build: Build, stage: Stage) -> None:
    """The pipeline's text encoders: the rows of the tokens the tokenizer's corpus never uses (``unknown_words``)."""
    train_unknown_words(build, stage, tokenizer_corpus(build, build.recipe.stage("tokenizer")))


# --------------------------------------------------------------------------- CLIP
def run_clip(build: Build, stage: Stage) -> None:
    """Both towers from seeds, contrastively; the text tower locks at ``stage.lock_step``."""
    split = build.load_split("train")
    model, tokenizer = fresh_clip(build)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.1)
    trainer = Trainer(build, stage, {"model": model}, optimizer)
    first_seed = batch_seed(build.recipe, stage)

    def step(index: int) -> torch.Tensor:
        if index >= stage.lock_step:
            lock_text_tower(build, model)
        rng = random.Random(first_seed + index)
        rows = np.random.default_rng(first_seed + index).choice(len(split), stage.batch, replace=False)
        captions = [tag_caption(split.characters[r], rng, keep=rng.uniform(0.2, 1.0)) if rng.random() < 0.5
                    else sentence_caption(split.characters[r], rng) for r in rows]
        tokens = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                    pixel_values=clip_pixels(split.pixels[rows]), return_loss=True)
        return out.loss

    trainer.run(step, lambda: cap_logit_scale(model))


def run_vision(build: Build, stage: Stage) -> None:
    """Go on training the CLIP's image tower alone (text locked), on captions that name every attribute."""
    require_finished(build, stage.after)
    split = build.load_split("train")
    model, tokenizer = load_trained_clip(build, stage.after)
    model.train()
    for part in TEXT_TOWER_PARTS:
        getattr(model, part).requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.1)
    trainer = Trainer(build, stage, {"model": model}, optimizer)
    first_seed = batch_seed(build.recipe, stage)

    def step(index: int) -> torch.Tensor:
        rng = random.Random(first_seed + index)
        rows = np.random.default_rng(first_seed + index).choice(len(split), stage.batch, replace=False)
        captions = [tag_caption(split.characters[r], rng, keep=1.0) if rng.random() < 0.7
                    else sentence_caption(split.characters[r], rng) for r in rows]
        tokens = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                     pixel_values=clip_pixels(split.pixels[rows]), return_loss=True).loss

    trainer.run(step, lambda: cap_logit_scale(model))


def run_novel(build: Build, stage: Stage) -> None:
    """A CLIP stage on the train split and a split composed with the novel values (for the scorer): ``novel``
    learns them in both towers, ``novel2`` in the image tower alone on novel's locked text tower, ``novel3``
    in the text tower alone from hardneg4's, the old values' words anchored (``Stage.anchor``)."""
    seed, count = build.recipe.novel_split
    render_split_file(build, "novel", seed, count, novel=True)  # once: novel2 finds it rendered
    run_hard_negatives(build, stage, novel=build.load_split("novel"))


def run_hard_negatives(build: Build, stage: Stage, novel: WorldSplit | None = None) -> None:
    """The image tower (``trains_text``: both towers) from the stage ``after``, with in-batch captions plus each
    category's other values as hard negatives. ``novel``: a split of pictures with novel values,
    ``stage.share`` of each batch; its values join every category's hard negatives (``DRAWABLE``), so a novel
    value is told apart from the old ones too. ``stage.anchor``: the image tower is locked and the text tower
    starts as the anchor stage's and is held to its embeddings of the old values' template sentences
    (``anchor_weight`` × mean 1 − cosine)."""
    from tools.world.attributes import DRAWABLE, SENTENCE_TEMPLATES

    require_finished(build, stage.after)
    text_trains, image_trains, anchor = stage.trains_text, stage.anchor is None, stage.anchor
    split = build.load_split("train")
    categories = ATTRIBUTES if novel is None else DRAWABLE
    model, tokenizer = load_trained_clip(build, stage.after)
    model.train()
    for part in TEXT_TOWER_PARTS:
        getattr(model, part).requires_grad_(text_trains)
    for part in IMAGE_TOWER_PARTS:
        getattr(model, part).requires_grad_(image_trains)
    if not image_trains:
        model.logit_scale.requires_grad_(False)
    if anchor is not None:  # the text tower starts as the anchor's and is held to it on the old values
        anchor_sentences, anchored = _take_anchor_text_tower(build, anchor, model, tokenizer)

    def embed_texts(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(out, dim=-1)

    def category_captions(template: int) -> dict[str, torch.Tensor]:
        return {c: embed_texts([SENTENCE_TEMPLATES[template].replace("{}", d) for d in values])
                for c, values in categories.items()}

    if not text_trains:
        with torch.no_grad():  # the text tower is locked: every category's captions embed once
            fixed = [category_captions(t) for t in range(len(SENTENCE_TEMPLATES))]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.1)
    trainer = Trainer(build, stage, {"model": model}, optimizer)
    first_seed = batch_seed(build.recipe, stage)

    def batch(seed: int) -> tuple[list, np.ndarray]:
        if novel is None:
            rows = np.random.default_rng(seed).choice(len(split), stage.batch, replace=False)
            return [split.characters[r] for r in rows], split.pixels[rows]
        rows_rng = np.random.default_rng(seed)
        novel_count = round(stage.batch * stage.share)
        rows = rows_rng.choice(len(split), stage.batch - novel_count, replace=False)
        novel_rows = rows_rng.choice(len(novel), novel_count, replace=False)
        return ([split.characters[r] for r in rows] + [novel.characters[r] for r in novel_rows],
                np.concatenate([split.pixels[rows], novel.pixels[novel_rows]]))

    def step(index: int) -> torch.Tensor:
        seed = first_seed + index
        rng = random.Random(seed)
        characters, pixels = batch(seed)
        with torch.set_grad_enabled(image_trains):
            image = model.get_image_features(pixel_values=clip_pixels(pixels))
        image = torch.nn.functional.normalize(image if isinstance(image, torch.Tensor) else image.pooler_output, dim=-1)
        with torch.set_grad_enabled(text_trains):
            text = embed_texts([tag_caption(c, rng, keep=1.0) for c in characters])
        scale = model.logit_scale.exp()
        labels = torch.arange(len(characters))
        logits = scale * image @ text.T
        loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        template = rng.randrange(len(SENTENCE_TEMPLATES))
        choices = category_captions(template) if text_trains else fixed[template]
        for category, values in categories.items():
            truth = torch.tensor([values.index(c.labels()[category]) for c in characters])
            loss = loss + stage.category_weight * torch.nn.functional.cross_entropy(scale * image @ choices[category].T, truth)
        if anchor is not None:
            drift = 1 - (embed_texts(anchor_sentences) * anchored).sum(-1)  # 1 - cosine per old sentence
            loss = loss + stage.anchor_weight * drift.mean()
        return loss

    trainer.run(step, lambda: cap_logit_scale(model))


def _take_anchor_text_tower(build: Build, anchor: str, model, tokenizer) -> tuple[list[str], torch.Tensor]:
    """Give ``model`` the text tower of the stage ``anchor``; return the old values' template sentences and
    that tower's normalised embeddings of them (what the anchor term holds the training tower to)."""
    from tools.world.attributes import SENTENCE_TEMPLATES

    sentences = [template.replace("{}", value) for template in SENTENCE_TEMPLATES
                 for values in ATTRIBUTES.values() for value in values]
    anchor_model, _ = load_trained_clip(build, anchor)
    for part in TEXT_TOWER_PARTS:
        getattr(model, part).load_state_dict(getattr(anchor_model, part).state_dict())
    with torch.no_grad():
        tokens = tokenizer(sentences, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = anchor_model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    return sentences, torch.nn.functional.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)


# --------------------------------------------------------------------------- VAE
def run_vae(build: Build, stage: Stage) -> None:
    """Encoder and decoder from seeds; the encoder locks at ``stage.lock_step``."""
    split = build.load_split("train")
    torch.manual_seed(build.recipe.seed + 1)
    vae = new_vae()
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=stage.lr, weight_decay=0.0)
    trainer = Trainer(build, stage, {"vae": vae}, optimizer)
    first_seed = batch_seed(build.recipe, stage)

    def step(index: int) -> torch.Tensor:
        if index >= stage.lock_step:
            lock_vae_encoder(build, vae, stage.name)
        rows = np.random.default_rng(first_seed + index).choice(len(split), stage.batch, replace=False)
        x = to_unit_range(split.pixels[rows])
        with torch.set_grad_enabled(index < stage.lock_step):
            posterior = vae.encode(x).latent_dist
        generator = torch.Generator().manual_seed(first_seed + index)
        recon = vae.decode(posterior.sample(generator=generator)).sample
        # L1 keeps flat colours crisp, L2 the overall tone; a tiny KL keeps latents near N(0, σ) for the UNet.
        return ((recon - x).abs().mean() + ((recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean())

    trainer.run(step)


def edge_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the images' horizontal and vertical differences: penalises blurred edges."""
    def grads(t):
        return t[..., :, 1:] - t[..., :, :-1], t[..., 1:, :] - t[..., :-1, :]
    (rx, ry), (tx, ty) = grads(recon), grads(x)
    return (rx - tx).abs().mean() + (ry - ty).abs().mean()


def pixel_loss(recon: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """L1 + L2, each pixel weighted by ``weight`` (the head weighted up) when given, plus the edge term."""
    if weight is None:
        return (recon - x).abs().mean() + ((recon - x) ** 2).mean() + edge_loss(recon, x)
    return (weight * ((recon - x).abs() + (recon - x) ** 2)).mean() / weight.mean() + edge_loss(recon, x)


def run_vae_again(build: Build, stage: Stage) -> None:
    """Encoder and decoder together again from the stage ``after``, the head weighted up; the new encoder is
    then locked (``locked_encoder``) and a UNet stage moves onto its latents."""
    _train_vae_from(build, stage, encoder_trains=True)
    locked_encoder(build, stage.name)


def run_decoder(build: Build, stage: Stage) -> None:
    """The VAE's decoder alone on the locked encoder's latents, from the stage ``after``; ``stage.share`` of each
    batch from the split composed with the novel values (rendered once, as the ``novel`` CLIP stages do)."""
    novel = None
    if stage.share:
        seed, count = build.recipe.novel_split
        render_split_file(build, "novel", seed, count, novel=True)
        novel = build.load_split("novel")
    _train_vae_from(build, stage, encoder_trains=False, novel=novel)


def _train_vae_from(build: Build, stage: Stage, encoder_trains: bool, novel: WorldSplit | None = None) -> None:
    """The VAE of the stage ``after`` trained on (the head weighted up in the pixel loss where ``head_weight``
    is not 1); the encoder too where ``encoder_trains``, with the tiny KL term that keeps its latents near N(0, σ).
    ``novel``: a split with novel values, ``stage.share`` of each batch (the rest from the train split)."""
    from tools.world.dataset import head_weight_map

    require_finished(build, stage.after)
    split = build.load_split("train")
    vae = load_trained_vae(build, stage=stage.after)
    vae.train()
    for part in ENCODER_PARTS:
        getattr(vae, part).requires_grad_(encoder_trains)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=0.0)
    trainer = Trainer(build, stage, {"vae": vae}, optimizer)
    first_seed = batch_seed(build.recipe, stage)

    def batch(seed: int) -> tuple[list, np.ndarray]:
        rows_rng = np.random.default_rng(seed)
        if novel is None:
            rows = rows_rng.choice(len(split), stage.batch, replace=False)
            return [split.characters[r] for r in rows], split.pixels[rows]
        novel_count = round(stage.batch * stage.share)
        rows = rows_rng.choice(len(split), stage.batch - novel_count, replace=False)
        novel_rows = rows_rng.choice(len(novel), novel_count, replace=False)
        return ([split.characters[r] for r in rows] + [novel.characters[r] for r in novel_rows],
                np.concatenate([split.pixels[rows], novel.pixels[novel_rows]]))

    def step(index: int) -> torch.Tensor:
        seed = first_seed + index
        characters, pixels = batch(seed)
        x = to_unit_range(pixels)
        with torch.set_grad_enabled(encoder_trains):
            posterior = vae.encode(x).latent_dist
            latents = posterior.sample(generator=torch.Generator().manual_seed(seed))
        recon = vae.decode(latents).sample
        weight = (None if stage.head_weight == 1.0 else
                  head_weight_map(characters, RESOLUTION, stage.head_weight))
        loss = pixel_loss(recon, x, weight)
        return loss + 1e-6 * posterior.kl().mean() if encoder_trains else loss

    trainer.run(step)


# --------------------------------------------------------------------------- UNet
def run_unet(build: Build, stage: Stage) -> None:
    """The UNet from seeds on the locked text tower (it may start while the CLIP's image tower trains on)."""
    clip_model, tokenizer = load_locked_clip(build)
    _train_unet(build, stage, clip_model, tokenizer, init=None)


def run_retune(build: Build, stage: Stage) -> None:
    """Fine-tune the UNet from the EMA of the stage ``after`` on the text tower of ``text_tower`` and the latents
    of ``latents``."""
    require_finished(build, stage.text_tower)
    require_finished(build, stage.latents)
    clip_model, tokenizer = load_trained_clip(build, stage.text_tower)
    init = require_finished(build, stage.after)["modules"]["ema"]
    _train_unet(build, stage, clip_model, tokenizer, init=init)


def latent_moments(build: Build, stage: Stage, split: WorldSplit) -> dict:
    """Mean and std of every training picture's latent under ``stage.latents``'s encoder, encoded once."""
    vae = load_trained_vae(build, encoder_only=True, stage=stage.latents)
    path = build.cache / ("unet_latent_moments.pt" if stage.latents == "vae"
                          else f"unet_latent_moments_{stage.latents}.pt")
    if not path.is_file():
        build.log(stage.name, f"encoding the training pictures with {stage.latents}'s encoder")
        with torch.no_grad():
            chunks = [vae.encode(to_unit_range(split.pixels[i:i + 256])).latent_dist
                      for i in range(0, len(split), 256)]
        moments = {"mean": torch.cat([c.mean for c in chunks]), "std": torch.cat([c.std for c in chunks])}
        atomic_write(path, lambda tmp: torch.save(moments, tmp))
    return {**torch.load(path), "scaling": vae.config.scaling_factor}


def _train_unet(build: Build, stage: Stage, clip_model, tokenizer, init: dict | None) -> None:
    from diffusers import DDPMScheduler

    from tools.world.dataset import latent_head_weight_map

    recipe = build.recipe
    split = build.load_split("unet")
    moments = latent_moments(build, stage, split)
    _, encoder_2 = text_towers(clip_model)
    scaling = moments["scaling"]
    torch.manual_seed(recipe.seed + 2)
    unet = new_unet(clip_model)
    if init is not None:
        unet.load_state_dict(init)
    unet.train()
    ema = new_unet(clip_model)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SDXL_SCHEDULER_CONFIG.items() if k != "timestep_spacing"})
    alphas = noise_scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=stage.lr, weight_decay=1e-2)
    trainer = Trainer(build, stage, {"unet": unet, "ema": ema}, optimizer)
    first_seed = batch_seed(recipe, stage)

    def step(index: int) -> torch.Tensor:
        seed = first_seed + index
        rng = random.Random(seed)
        generator = torch.Generator().manual_seed(seed)
        rows = torch.from_numpy(np.random.default_rng(seed).choice(len(split), stage.batch, replace=False))
        latents = (moments["mean"][rows] + moments["std"][rows] * torch.randn(moments["mean"][rows].shape,
                                                                                 generator=generator)) * scaling
        captions = ["" if rng.random() < stage.caption_dropout else
                    tag_caption(split.characters[int(r)], rng, keep=rng.uniform(0.5, 1.0)) for r in rows]
        prompt_embeds, pooled = encode_captions(encoder_2, tokenizer, captions)
        # (original height, width, crop top, left, target height, width) per picture, as SDXL's add_time_ids
        time_ids = torch.tensor([[rng.choice(stage.original_sizes), rng.choice(stage.original_sizes), 0, 0,
                                  RESOLUTION, RESOLUTION] for _ in rows], dtype=torch.float32)
        noise = torch.randn(latents.shape, generator=generator)
        if stage.noise_offset:  # per picture and channel, as kohya's and diffusers' noise_offset
            noise = noise + stage.noise_offset * torch.randn((len(rows), noise.shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(0, 1000, (len(rows),), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = unet(noisy, timesteps, encoder_hidden_states=prompt_embeds,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        # Min-SNR-γ weighting (Hang et al. 2023) for epsilon prediction: min(SNR, γ) / SNR.
        weight = torch.clamp(snr[timesteps], max=stage.min_snr_gamma) / snr[timesteps]
        if stage.head_weight == 1.0:
            return (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        mask = latent_head_weight_map([split.characters[int(r)] for r in rows], RESOLUTION, latents.shape[-1],
                                      stage.head_weight)
        per_picture = (mask * (pred - noise) ** 2).mean(dim=(1, 2, 3)) / mask.mean(dim=(1, 2, 3))
        return (weight * per_picture).mean()

    def update_ema() -> None:
        decay = stage.ema_decay if init is not None else min(stage.ema_decay, (1 + trainer.step) / (10 + trainer.step))
        with torch.no_grad():
            for ema_p, p in zip(ema.parameters(), unet.parameters()):
                ema_p.lerp_(p, 1 - decay)

    trainer.run(step, update_ema)


RUNNERS = {"data": run_data, "tokenizer": run_tokenizer, "clip": run_clip, "vision": run_vision,
           "hard_negatives": run_hard_negatives, "novel": run_novel, "vae": run_vae, "vae_again": run_vae_again,
           "decoder": run_decoder, "unet": run_unet, "retune": run_retune, "unknown_words": run_unknown_words}
