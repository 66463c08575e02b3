"""``aldar story``: JSON validation, one retry on a bad reply, storybook rendering, the whole flow against a
loopback OpenAI-compatible server with the tiny local generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.llm.story import StoryFormatError, parse_story, scene_prompt
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tests.test_generator import write_random_lora
from tools.generation.local import GeneratedImage
from tools.generation.storybook import render_html, render_markdown, write_storybook

SCENES = [
    {"text": "Aldar rode into the aul on his old horse.", "image_prompt": "Aldar on a thin horse, steppe, morning"},
    {"text": "The greedy bai <b>refused</b> him bread & tea.", "image_prompt": "a fat bai in a yurt, frowning"},
    {"text": "Aldar sold the bai a 'magic' coat.\nThe bai paid in gold.", "image_prompt": "Aldar holds up a coat"},
]
GOOD_REPLY = json.dumps({"title": "Aldar & the Greedy Bai", "scenes": SCENES})



@pytest.fixture
def llm(monkeypatch):
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-story-0000")
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        yield server


def story_cli(tmp_path: Path, *extra: str) -> int:
    return main(["story", "Aldar outwits the greedy bai", "--profile", "tiny", "--output-dir", str(tmp_path / "out"),
                 "--scenes", "3", "--steps", "2", "-q", *extra])


def only_book(tmp_path: Path) -> Path:
    [book] = list((tmp_path / "out" / "stories").iterdir())
    return book


# --------------------------------------------------------------------------- parsing
def test_parse_story_accepts_fences_and_chatter_and_trims_extra_scenes():
    fenced = f"Here is your tale!\n```json\n{GOOD_REPLY}\n```\nEnjoy."
    story = parse_story(fenced, scenes_wanted=3)
    assert story["title"] == "Aldar & the Greedy Bai"
    assert [s["image_prompt"] for s in story["scenes"]] == [s["image_prompt"] for s in SCENES]
    five = json.dumps({"title": "T", "scenes": SCENES + SCENES[:2]})
    assert len(parse_story(five, scenes_wanted=4)["scenes"]) == 4


@pytest.mark.parametrize("reply, message", [
    ("Once upon a time...", "no JSON object"),
    ('{"title": "T", "scenes": [}', "invalid JSON"),
    (json.dumps({"title": "", "scenes": SCENES}), '"title"'),
    (json.dumps({"title": "T", "scenes": SCENES[:2]}), "needs 3 to 6"),
    (json.dumps({"title": "T", "scenes": [*SCENES[:2], {"text": "x"}]}), 'scene 3 needs a non-empty string "image_prompt"'),
])
def test_parse_story_rejects_bad_replies_with_a_message_for_the_model(reply, message):
    with pytest.raises(StoryFormatError, match=message):
        parse_story(reply)


def test_scene_prompt_puts_the_trigger_token_first_once(tiny_settings):
    assert scene_prompt(tiny_settings, "Aldar laughing") == "aldarkose, Aldar laughing"
    assert scene_prompt(tiny_settings, "AldarKose, laughing") == "AldarKose, laughing"


# --------------------------------------------------------------------------- rendering
def test_storybook_pages_escape_text_and_use_relative_image_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "scene 1.png").write_bytes(b"png")
    story = {"title": "<script>alert(1)</script>", "generator": "lora", "llm_model": "m", "scenes": [
        {"text": "Tea & <bread>", "image_prompt": 'a "quoted" prompt', "image": "images/scene 1.png"},
        {"text": "No picture here.", "image_prompt": "p", "image": None, "image_error": "safety <filter>"}]}
    files = write_storybook(tmp_path, story)
    page = files["html"].read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<p>Tea &amp; &lt;bread&gt;</p>" in page
    assert '<img src="images/scene%201.png" alt="a &quot;quoted&quot; prompt">' in page
    assert "safety &lt;filter&gt;" in page and "http" not in page  # nothing fetched when opened offline
    assert "![a \"quoted\" prompt](<images/scene 1.png>)" in render_markdown(story)
    assert json.loads(files["json"].read_text())["scenes"][1]["image"] is None
    assert render_html(story) == page


# --------------------------------------------------------------------------- the whole flow
def test_story_with_a_lora_retries_bad_json_once_and_writes_the_book(tmp_path, llm, capsys):
    lora_dir = tmp_path / "run"
    lora_dir.mkdir()
    write_random_lora(lora_dir, seed=3)
    llm.enqueue(Reply.text("Sure! Here is a story: {title: Aldar}"), Reply.text(f"```json\n{GOOD_REPLY}\n```"))

    assert story_cli(tmp_path, "--generator", "lora", "--lora", str(lora_dir)) == 0

    assert len(llm.requests) == 2  # exactly one retry
    retry = llm.requests[1].messages
    assert retry[-2] == {"role": "assistant", "content": "Sure! Here is a story: {title: Aldar}"}
    assert "could not be used: invalid JSON" in retry[-1]["content"]
    assert llm.requests[0].body["response_format"] == {"type": "json_object"}
    assert "Aldar outwits the greedy bai" == llm.requests[0].messages[-1]["content"]

    book = only_book(tmp_path)
    assert book.name.endswith("_aldar-outwits-the-greedy-bai")
    story = json.loads((book / "story.json").read_text(encoding="utf-8"))
    assert story["title"] == "Aldar & the Greedy Bai" and story["generator"] == "lora"
    assert story["llm_attempts"] == 2 and story["profile"] == "tiny" and "notice" in story
    assert story["lora_path"] == str((lora_dir / "pytorch_lora_weights.safetensors").resolve())
    page, markdown = (book / "index.html").read_text(encoding="utf-8"), (book / "story.md").read_text(encoding="utf-8")
    for scene, original in zip(story["scenes"], SCENES):
        assert scene["text"] == original["text"]
        assert scene["prompt"] == f"aldarkose, {original['image_prompt']}"
        assert (book / scene["image"]).is_file() and not Path(scene["image"]).is_absolute()
        assert f'src="{scene["image"]}"' in page and f"(<{scene['image']}>)" in markdown
    assert "The greedy bai &lt;b&gt;refused&lt;/b&gt; him bread &amp; tea." in page
    assert "# Aldar & the Greedy Bai" in markdown
    assert "index.html" in capsys.readouterr().out


def test_story_fails_cleanly_when_the_model_never_returns_valid_json(tmp_path, llm, capsys):
    llm.enqueue(Reply.text("not json"), Reply.text(json.dumps({"title": "T", "scenes": SCENES[:1]})))
    assert story_cli(tmp_path, "--generator", "base") == 2
    assert len(llm.requests) == 2
    err = capsys.readouterr().err
    assert "unusable twice" in err and "needs 3 to 6" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "stories").exists()


def test_story_without_an_llm_key_names_the_variables(tmp_path, capsys):
    assert story_cli(tmp_path, "--generator", "base") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "DEEPSEEK_API_KEY" in err and "OPENAI_API_KEY" in err and "OPENAI_BASE_URL" in err


def test_generator_problems_are_reported_before_the_llm_is_asked(tmp_path, llm, capsys):
    assert story_cli(tmp_path, "--generator", "lora") == 2  # no trained LoRA in output_dir
    assert "no trained LoRA found" in capsys.readouterr().err
    assert story_cli(tmp_path, "--generator", "freepik") == 2
    assert "FREEPIK_API_KEY" in capsys.readouterr().err
    assert story_cli(tmp_path, "--generator", "base", "--scenes", "9") == 2
    assert "3 to 6 scenes" in capsys.readouterr().err
    assert llm.requests == []


def test_hosted_story_keeps_scenes_the_provider_filtered(tmp_path, llm, monkeypatch):
    """A provider (faked here; its HTTP is tested with its own fakes) may return no image for a scene."""
    from PIL import Image

    import tools.providers as providers

    class FakeProvider:
        name = "deepai"

    def fake_generate(provider, prompts, out_dir, images_per_prompt, seed, *, skipped=None, quiet=True):
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for index, prompt in enumerate(prompts):
            if index == 1:
                skipped.append("deepai: prompt 2 gave no image — safety-filtered")
                continue
            path = out_dir / f"deepai_{index}.png"
            Image.new("RGB", (64, 64), "orange").save(path)
            results.append(GeneratedImage(path, "deepai", prompt, seed, {}))
        return results

    monkeypatch.setattr(providers, "configured_providers", lambda settings, names: ([FakeProvider()], []))
    monkeypatch.setattr(providers, "generate_with_provider", fake_generate)
    llm.enqueue(Reply.text(GOOD_REPLY))
    assert story_cli(tmp_path, "--generator", "deepai") == 0
    story = json.loads((only_book(tmp_path) / "story.json").read_text(encoding="utf-8"))
    assert [bool(s["image"]) for s in story["scenes"]] == [True, False, True]
    assert "profile" not in story  # no local model drew anything
    assert story["notes"] == ["deepai: prompt 2 gave no image — safety-filtered"]
    assert "no picture" in (only_book(tmp_path) / "index.html").read_text(encoding="utf-8")


def test_a_key_the_model_echoes_reaches_no_page_picture_or_terminal(tmp_path, llm, capsys):
    """A misbehaving proxy or model echoes the bearer key it was called with into the title, the scene
    texts and the image prompts: none of the book's files (pictures' metadata included) nor the output holds it."""
    from tests.fakes.openai_server import BEARER_KEY
    from tools.generation.png_metadata import read_generation_parameters

    key = "sk-test-story-0000"
    scenes = [{"text": f"Aldar whispered {BEARER_KEY} to the bai.", "image_prompt": f"Aldar and a scroll saying {BEARER_KEY}"}
              for _ in range(3)]
    llm.enqueue(Reply.text(json.dumps({"title": f"The key {BEARER_KEY}", "scenes": scenes})))

    assert story_cli(tmp_path, "--generator", "base") == 0

    book = only_book(tmp_path)
    story = json.loads((book / "story.json").read_text(encoding="utf-8"))
    assert story["title"] == "The key ***"
    assert story["scenes"][0]["text"] == "Aldar whispered *** to the bai."
    written = [path for path in book.rglob("*") if path.is_file()]
    assert {p.name for p in written} >= {"story.json", "story.md", "index.html"}
    pictures = [p for p in written if p.suffix == ".png"]
    assert len(pictures) == 3
    for path in written:
        assert key.encode() not in path.read_bytes(), path
    assert read_generation_parameters(pictures[0])["prompt"] == "aldarkose, Aldar and a scroll saying ***"
    shown = capsys.readouterr()
    assert key not in shown.out + shown.err


def test_the_writer_is_told_about_the_references_character_never_aldar_for_another(tmp_path, llm):
    """The story's system prompt names the run's character and describes it from its character.json, else from
    the saved analysis — a user's own character is not told to be a Kazakh trickster in an orange robe."""
    llm.enqueue(Reply.text(GOOD_REPLY), Reply.text(GOOD_REPLY), Reply.text(GOOD_REPLY))
    assert story_cli(tmp_path, "--generator", "base") == 0
    bundled = llm.requests[-1].messages[0]["content"]
    assert "Aldar Köse, the clever, kind-hearted trickster of Kazakh folklore" in bundled

    robot = tmp_path / "blue_bot"
    robot.mkdir()
    (robot / "character.json").write_text(json.dumps({"trigger_token": "bluebot", "character_name": "Blue Bot"}))
    analysis = tmp_path / "robot_out" / "feature_analysis.json"  # where `aldar analyze` saves it
    analysis.parent.mkdir()
    analysis.write_text(json.dumps({"key_features": ["square head", "blue metal body", "forest"]}))
    assert main(["story", "Blue Bot finds a key", "--profile", "tiny", "--references", str(robot),
                 "--output-dir", str(tmp_path / "robot_out"),
                 "--scenes", "3", "--steps", "2", "-q", "--generator", "base"]) == 0
    told = llm.requests[-1].messages[0]["content"]
    assert "Blue Bot, who looks like this in every picture: square head, blue metal body, forest" in told
    assert not any(word in told.lower() for word in ("aldar", "kazakh", "trickster", "orange"))
