"""Pivotal tuning: the trigger word trained as new tokens beside the LoRA (tools.embeddings), on the tiny profile."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.test_levers import references  # noqa: F401  (the fixture: three 64 px pictures, trigger aldarkose)
from tests.test_trainer_features import fresh_pipeline, quick
from tools.embeddings import embedding_file, initial_rows, read_embedding
from tools.errors import ConfigError
from tools.models import load_sdxl_pipeline
from tools.training.trainer import train_lora


def _pipeline_state(pipe) -> tuple:
    encoders = (pipe.text_encoder, pipe.text_encoder_2)
    return (len(pipe.tokenizer), len(pipe.tokenizer_2), pipe.tokenizer.tokenize("aldarkose, smiling"),
            [(n, p.requires_grad, p.grad is None) for e in encoders for n, p in e.named_parameters()],
            *(e.get_input_embeddings().weight.detach().clone() for e in encoders))


def _same_state(a: tuple, b: tuple) -> bool:
    """Tokens, rows, and each encoder parameter's requires_grad with no gradient left on it."""
    return a[:4] == b[:4] and all(torch.equal(x, y) for x, y in zip(a[4:], b[4:]))


def test_the_triggers_rows_train_beside_the_lora_and_the_shared_pipeline_is_left_as_it_was(profile, references,
                                                                                            tmp_path):
    pipe = load_sdxl_pipeline(profile)
    before = _pipeline_state(pipe)
    config = quick(profile, steps=6, checkpoint_every=3, pivotal_tuning=True, embedding_learning_rate=5e-2)
    result = train_lora(config, profile, references, tmp_path / "run", quiet=True)

    trigger, rows = read_embedding(embedding_file(result.run_dir, "aldarkose"))
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    assert trigger == "aldarkose" and {k: tuple(v.shape) for k, v in rows.items()} == {
        "clip_l": (2, width), "clip_g": (2, pipe.text_encoder_2.get_input_embeddings().weight.shape[1])}
    start = initial_rows(fresh_pipeline(profile), "aldarkose", 2, config.seed)
    assert all((rows[k] - start[k]).abs().max() > 1e-3 for k in rows)  # both encoders' rows learnt
    # the first row starts where the base reads the word: the known word's own row on the toy tokenizer
    known = pipe.tokenizer("aldarkose", add_special_tokens=False).input_ids[0]
    assert torch.equal(start["clip_l"][0], before[4][known])
    assert _same_state(_pipeline_state(pipe), before)  # tokens and rows taken out again
    for step in (3, 6):
        assert embedding_file(result.run_dir / f"checkpoint-{step:06d}", "aldarkose").is_file()
    metadata = safe_open(str(result.kohya_path), "pt").metadata()
    assert metadata["aldar_trigger_embedding"] == "embeddings/aldarkose.safetensors"


def test_a_resumed_run_continues_the_embedding_bit_for_bit(profile, references, tmp_path):
    config = quick(profile, steps=6, checkpoint_every=3, pivotal_tuning=True, select_best_checkpoint=False)
    straight = train_lora(config, profile, references, tmp_path / "straight", quiet=True)
    train_lora(config.replace(steps=3), profile, references, tmp_path / "resumed", quiet=True)
    resumed = train_lora(config, profile, references, tmp_path / "resumed", quiet=True)
    a = read_embedding(embedding_file(straight.run_dir, "aldarkose"))[1]
    b = read_embedding(embedding_file(resumed.run_dir, "aldarkose"))[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(load_file(str(straight.lora_path)).values(),
                                                  load_file(str(resumed.lora_path)).values()))


def _prompt_embeddings(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(prompt, device=torch.device("cpu"), do_classifier_free_guidance=False)[0]


def test_the_generator_reads_the_trigger_as_stock_diffusers_does_with_both_files_and_the_base_as_before(
        profile, references, tmp_path):
    from tools.generation.local import activate_lora, generate_local
    from tools.generation.sampling import SamplingSpec

    config = quick(profile, steps=4, pivotal_tuning=True, embedding_learning_rate=5e-2)
    result = train_lora(config, profile, references, tmp_path / "run", quiet=True)
    pipe = load_sdxl_pipeline(profile)
    before = _pipeline_state(pipe)
    prompt = "aldarkose, smiling, blue chapan"
    base_reading = _prompt_embeddings(pipe, prompt)
    sampling = SamplingSpec(images_per_prompt=1)
    ours = generate_local(profile, [prompt], tmp_path / "ours", sampling, lora_path=result.lora_path, quiet=True)
    assert pipe.maybe_convert_prompt(prompt, pipe.tokenizer) == "aldarkose aldarkose_1, smiling, blue chapan"
    our_reading = _prompt_embeddings(pipe, prompt)
    base = generate_local(profile, [prompt], tmp_path / "base", sampling, lora_path=None, name="base", quiet=True)
    assert _same_state(_pipeline_state(pipe), before)  # the base reads the word as it always did
    assert torch.equal(_prompt_embeddings(pipe, prompt), base_reading)
    activate_lora(pipe, result.lora_path)  # loaded again from the file: the same reading
    assert torch.equal(_prompt_embeddings(pipe, prompt), our_reading)
    activate_lora(pipe, None)

    # What a diffusers user does with the embedding file (the recipe of diffusers' advanced SDXL script).
    stock = fresh_pipeline(profile)
    rows = load_file(str(embedding_file(result.run_dir, "aldarkose")))
    stock.load_textual_inversion(rows["clip_l"], token="aldarkose", text_encoder=stock.text_encoder,
                                 tokenizer=stock.tokenizer)
    stock.load_textual_inversion(rows["clip_g"], token="aldarkose", text_encoder=stock.text_encoder_2,
                                 tokenizer=stock.tokenizer_2)
    assert torch.allclose(_prompt_embeddings(stock, prompt), our_reading, atol=1e-6)
    assert not torch.allclose(our_reading, base_reading, atol=1e-3)
    untriggered = "smiling, blue chapan"
    assert torch.equal(_prompt_embeddings(stock, untriggered), _prompt_embeddings(pipe, untriggered))
    mine, theirs = (np.asarray(Image.open(made[0].path), dtype=np.float32) for made in (ours, base))
    assert np.abs(mine - theirs).mean() > 1.0  # the LoRA with its trigger's rows draws something else than the base


def test_bad_pivotal_settings_are_refused_in_one_line(profile, references, tmp_path):
    from tools.training.setup import check_init_weights

    for trigger in ("blue bot", "ZoraBek", "ab"):
        with pytest.raises(ConfigError, match="one-word, lower-case trigger"):
            quick(profile, pivotal_tuning=True, trigger_token=trigger).validate()
    with pytest.raises(ConfigError, match="embedding_vectors 0"):
        quick(profile, pivotal_tuning=True, embedding_vectors=0).validate()
    plain = train_lora(quick(profile, steps=2, checkpoint_every=2), profile, references, tmp_path / "plain", quiet=True)
    checkpoint = plain.checkpoints[-1]
    with pytest.raises(ConfigError, match="pivotal tuning off"):
        check_init_weights(quick(profile, pivotal_tuning=True, init_weights=str(checkpoint)), profile)
    check_init_weights(quick(profile, init_weights=str(checkpoint)), profile)  # the same kind: fine


def test_a_damaged_embedding_beside_a_lora_is_one_line_naming_the_file(profile, tmp_path):
    from tools.embeddings import activate_embedding
    from tools.errors import InputError

    lora = tmp_path / "run" / "pytorch_lora_weights.safetensors"
    damaged = embedding_file(lora.parent, "zorabek")
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=r"embedding .*zorabek.safetensors cannot be read") as caught:
        activate_embedding(load_sdxl_pipeline(profile), lora)
    assert "\n" not in str(caught.value)
    (damaged.parent / "other.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="holds 2 embeddings"):
        activate_embedding(load_sdxl_pipeline(profile), lora)


def test_pivotal_tuning_trains_beside_the_text_encoders_lora(profile, references, tmp_path):
    """Both at once (diffusers' advanced script allows it): the rows are optimised once, in their own group."""
    pipe = load_sdxl_pipeline(profile)
    before = _pipeline_state(pipe)
    config = quick(profile, steps=3, pivotal_tuning=True, train_text_encoder=True, embedding_learning_rate=5e-2)
    result = train_lora(config, profile, references, tmp_path / "run", quiet=True)
    rows = read_embedding(result.embedding_path)[1]
    start = initial_rows(fresh_pipeline(profile), "aldarkose", 2, config.seed)
    assert all((rows[k] - start[k]).abs().max() > 1e-3 for k in rows)
    learnt = {key: value for key, value in load_file(str(result.lora_path)).items()
              if key.startswith(("text_encoder.", "text_encoder_2.")) and ".up." in key}  # B: zero at the start
    # the encoders' LoRA trained too (all but the layers after the penultimate one, whose output SDXL does not read)
    assert learnt and sum(bool(value.abs().max() > 0) for value in learnt.values()) > 0.8 * len(learnt)
    after = _pipeline_state(pipe)  # (the encoders' LoRA leaves them frozen, as it did before pivotal tuning)
    assert after[:3] == before[:3] and all(no_grad for _, _, no_grad in after[3])
    assert all(torch.equal(x, y) for x, y in zip(after[4:], before[4:]))


def test_the_trigger_is_read_with_every_vector_in_any_case_and_only_as_a_whole_word(profile, references, tmp_path):
    from tools.embeddings import spelled_as_token
    from tools.generation.local import activate_lora

    assert spelled_as_token(["Zorabek, a man", "ZORABEK and zorabeks", "pre-zorabek"], "zorabek") == [
        "zorabek, a man", "zorabek and zorabeks", "pre-zorabek"]
    result = train_lora(quick(profile, steps=2, pivotal_tuning=True), profile, references, tmp_path / "run", quiet=True)
    pipe = load_sdxl_pipeline(profile)
    activate_lora(pipe, result.lora_path)
    try:
        lower, upper = (_prompt_embeddings(pipe, spelled_as_token([p], "aldarkose")[0])
                        for p in ("aldarkose, smiling", "Aldarkose, smiling"))
        assert torch.equal(lower, upper)
    finally:
        activate_lora(pipe, None)
