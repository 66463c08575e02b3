import json
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from agent.cli import main
from tests.test_analyzer import TRIGGER, CountingEncoder, draw_character, make_references, tiny_profile
from tools.scoring.analyzer import analyze_references
from tools.scoring.embedding_cache import EmbeddingCache
from tools.errors import ConfigError, InputError
from tools.models import TINY_NOTICE, load_clip
from tools.scoring.scorer import band, build_feedback, priority, score_generators, variety
from tools.settings import BUNDLED_TAXONOMY

WEIGHTS = {"clip": 0.4, "features": 0.4, "ssim": 0.2}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALDAR_CACHE", str(tmp_path / "cache"))


def analysis_for(references, encoder=None):
    return analyze_references(references, tiny_profile(), BUNDLED_TAXONOMY, TRIGGER, "A", None, encoder=encoder)


def shuffled_copy(source, target, seed=0):
    pixels = np.asarray(Image.open(source).convert("RGB"))
    flat = pixels.reshape(-1, 3).copy()
    np.random.default_rng(seed).shuffle(flat)
    Image.fromarray(flat.reshape(pixels.shape)).save(target)
    return target


# --------------------------------------------------------------------------- per-image scores
def test_image_against_itself_and_a_shuffled_copy(tmp_path):
    references = tmp_path / "refs"
    original = draw_character(references / "a.png", seed=1)
    shuffled = shuffled_copy(original, tmp_path / "shuffled.png")
    analysis = analysis_for(references)
    report = score_generators({"self": [original], "shuffled": [shuffled]}, references, tiny_profile(),
                              analysis, WEIGHTS)
    same, mixed = report["images"]
    assert same["clip_mean"] == pytest.approx(1.0, abs=1e-5) and same["clip_max"] == pytest.approx(1.0, abs=1e-5)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert same["features"] == 1.0  # the image is its own only reference: it shows every key feature
    assert mixed["ssim"] < 0.5 < same["ssim"]
    assert report["ceiling"] is None  # one reference: nothing to leave out
    for row in report["images"]:
        assert row["quality"] == pytest.approx(0.4 * row["clip"] + 0.4 * row["features"] + 0.2 * row["ssim"])
        assert row["clip"] == pytest.approx(min(1.0, max(0.0, row["clip_mean"])))
        assert row["features"] == sum(row["feature_passes"].values()) / len(analysis["key_features"])
    assert report["profile"]["profile"] == "tiny" and report["profile"]["notice"] == TINY_NOTICE


def test_rankings_follow_mean_quality_with_reference_copies_ranked_apart(tmp_path):
    references = make_references(tmp_path / "refs", 3)
    gen = tmp_path / "gen"
    gen.mkdir()
    images = {
        "copies": [shutil.copy(references / "ref1.png", gen / "c1.png"), shutil.copy(references / "ref2.png", gen / "c2.png")],
        "noise": [shuffled_copy(references / "ref3.png", gen / "n1.png", seed=i) for i in range(1)],
        "mixed": [shuffled_copy(references / "ref2.png", gen / f"m{i}.png", seed=10 + i) for i in range(2)],
    }
    report = score_generators(images, references, tiny_profile(), analysis_for(references), WEIGHTS)
    means = {}
    for name, paths in images.items():
        rows = [r for r in report["images"] if r["generator"] == name]
        assert [r["path"] for r in rows] == [str(p) for p in paths]
        values = np.array([r["quality"] for r in rows])
        summary = report["generators"][name]
        assert summary["count"] == len(paths)
        assert summary["quality"]["mean"] == pytest.approx(values.mean())
        assert summary["quality"]["std"] == pytest.approx(values.std())
        assert summary["band"] == band(values.mean())
        means[name] = values.mean()
    # Exact copies of references score highest, but a memorised reference is no winner: ranked apart, last.
    assert means["copies"] > max(means["noise"], means["mixed"])
    honest = sorted(["noise", "mixed"], key=lambda n: -means[n])
    assert [r["generator"] for r in report["ranking"]] == honest + ["copies"]
    assert [r["rank"] for r in report["ranking"]] == [1, 2, None]
    assert [r["reference_copy"] for r in report["ranking"]] == [False, False, True]
    assert report["generators"]["copies"]["reference_copies"] == 2
    assert report["generators"]["noise"]["reference_copies"] == 0
    copied = [r for r in report["images"] if r["generator"] == "copies"]
    assert [r["copied_reference"] for r in copied] == ["ref1.png", "ref2.png"] and all(r["reference_copy"] for r in copied)


def test_ceiling_is_leave_one_out(tmp_path):
    references = tmp_path / "refs"
    draw_character(references / "a1.png", seed=3)
    shutil.copy(references / "a1.png", references / "a2.png")
    draw_character(references / "b.png", seed=4)
    profile = tiny_profile()
    analysis = analysis_for(references)
    report = score_generators({"x": [references / "b.png"]}, references, profile, analysis, WEIGHTS)
    ceiling = report["ceiling"]
    assert ceiling["method"] == "leave-one-out" and ceiling["count"] == 3
    rows = {r["file"]: r for r in ceiling["per_reference"]}

    encoder = load_clip(profile)
    a, b = encoder.embed_images([Image.open(references / "a1.png").convert("RGB"),
                                 Image.open(references / "b.png").convert("RGB")])
    cos_ab = float(a @ b)
    luma = [np.asarray(Image.open(references / n).convert("L").resize((256, 256), Image.BICUBIC), dtype=np.float64)
            for n in ("a1.png", "b.png")]
    ssim_ab = structural_similarity(luma[0], luma[1], gaussian_weights=True, sigma=1.5, win_size=11,
                                    use_sample_covariance=False, data_range=255.0)
    for twin in ("a1.png", "a2.png"):  # each twin sees its copy and b
        assert rows[twin]["clip_max"] == pytest.approx(1.0, abs=1e-5)
        assert rows[twin]["clip_mean"] == pytest.approx((1.0 + cos_ab) / 2, abs=1e-5)
        assert rows[twin]["ssim"] == pytest.approx(1.0)
    # b never sees itself: only the two identical a's
    assert rows["b.png"]["clip_max"] == pytest.approx(cos_ab, abs=1e-5)
    assert rows["b.png"]["clip_mean"] == pytest.approx(cos_ab, abs=1e-5)
    assert rows["b.png"]["ssim"] == pytest.approx(max(0.0, ssim_ab), abs=1e-9)
    assert rows["b.png"]["ssim"] < 1.0
    # b's key features come from the a's only: a's own top-1 features
    a_top = [analysis["per_image"]["a1.png"][c]["top"][0]["feature"] for c in analysis["categories"]]
    assert rows["b.png"]["key_features"] == a_top
    # a1's key features come from its twin and b: per category the best mean of the two
    per_image = analysis["per_image"]
    for category in analysis["categories"]:
        probs_a, probs_b = per_image["a1.png"][category]["probabilities"], per_image["b.png"][category]["probabilities"]
        top = max(probs_a[f] + probs_b[f] for f in probs_a)
        tied = [f for f in probs_a if probs_a[f] + probs_b[f] >= top - 1e-6]  # saturated probabilities can tie
        best = next(f for f in tied if f in rows["a1.png"]["key_features"])
        if per_image["a1.png"][category]["top"][0]["feature"] == best:
            assert rows["a1.png"]["feature_passes"][best] is True
    assert rows["a1.png"]["features"] == pytest.approx(
        sum(rows["a1.png"]["feature_passes"].values()) / len(rows["a1.png"]["key_features"]))
    for row in rows.values():
        assert row["quality"] == pytest.approx(0.4 * row["clip"] + 0.4 * row["features"] + 0.2 * row["ssim"])
    assert ceiling["quality"]["mean"] == pytest.approx(np.mean([r["quality"] for r in rows.values()]))


def test_reference_embeddings_come_from_the_cache(tmp_path):
    references = make_references(tmp_path / "refs", 3)
    generated = [draw_character(tmp_path / "gen" / f"{i}.png", seed=20 + i) for i in range(4)]
    profile = tiny_profile()
    encoder = CountingEncoder(load_clip(profile))
    analysis = analysis_for(references, encoder)  # fills the default (ALDAR_CACHE) cache
    assert encoder.images_embedded == 3
    score_generators({"g": generated}, references, profile, analysis, WEIGHTS, encoder=encoder)
    assert encoder.images_embedded == 3 + 4  # references read from disk, only the new images embedded
    score_generators({"g": generated}, references, profile, analysis, WEIGHTS, encoder=encoder, use_cache=False)
    assert encoder.images_embedded == 3 + 4 + 3 + 4
    cache = EmbeddingCache(tmp_path / "other")
    score_generators({"g": generated}, references, profile, analysis, WEIGHTS, encoder=encoder, cache=cache)
    assert (cache.misses, cache.hits) == (3, 0)


class ExplodingEncoder:
    def __getattr__(self, name):
        raise AssertionError("the model must not be touched before inputs are validated")


def test_bad_weights_and_bad_images_fail_before_the_model(tmp_path):
    references = make_references(tmp_path / "refs", 2)
    analysis = analysis_for(references)
    good = [references / "ref1.png"]
    with pytest.raises(ConfigError, match="sum to 1.1"):
        score_generators({"g": good}, references, tiny_profile(), analysis, {"clip": 0.5, "features": 0.4, "ssim": 0.2},
                         encoder=ExplodingEncoder())
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match="zero-byte"):
        score_generators({"g": [tmp_path / "zero.png"]}, references, tiny_profile(), analysis, WEIGHTS,
                         encoder=ExplodingEncoder())
    with pytest.raises(InputError, match="no generated images"):
        score_generators({}, references, tiny_profile(), analysis, WEIGHTS, encoder=ExplodingEncoder())
    with pytest.raises(InputError, match="incomplete"):
        score_generators({"g": good}, references, tiny_profile(), {"model": "x"}, WEIGHTS, encoder=ExplodingEncoder())
    edited = json.loads(json.dumps(analysis))
    edited["key_feature_details"][0]["category"] = "no such category"
    with pytest.raises(InputError, match="incomplete"):
        score_generators({"g": good}, references, tiny_profile(), edited, WEIGHTS, encoder=ExplodingEncoder())


def test_analysis_from_another_model_is_refused(tmp_path):
    references = make_references(tmp_path / "refs", 2)
    analysis = {**analysis_for(references), "model": "openai/clip-vit-large-patch14"}
    with pytest.raises(InputError, match="rerun `aldar analyze`"):
        score_generators({"g": [references / "ref1.png"]}, references, tiny_profile(), analysis, WEIGHTS)


# --------------------------------------------------------------------------- feedback
def fake_report(generators: dict, ceiling: dict | None, features=("round face", "thin mustache")):
    def entry(m):
        return {"count": 4, **{k: {"mean": m[k], "std": 0.0} for k in ("quality", "clip", "features", "ssim")},
                "feature_pass_rate": m.get("rates", {f: 1.0 for f in features}), "band": band(m["quality"])}
    order = sorted(generators, key=lambda n: -generators[n]["quality"])
    return {"profile": {"profile": "tiny", "notice": TINY_NOTICE}, "key_features": list(features),
            "key_feature_categories": {"round face": "face_shape", "thin mustache": "facial_hair"},
            "generators": {n: entry(m) for n, m in generators.items()},
            "ranking": [{"rank": i + 1, "generator": n, "quality": generators[n]["quality"]} for i, n in enumerate(order)],
            "ceiling": None if ceiling is None else {"count": 5, **entry(ceiling)}}


def test_priority_and_band_thresholds():
    assert [priority(g) for g in (0.2, 0.08, 0.0799, 0.04, 0.0399, 0.0101, 0.01, 0.0, -0.3)] == \
        ["high", "high", "medium", "medium", "low", "low", None, None, None]
    assert [band(s) for s in (1.0, 0.8, 0.7999, 0.6, 0.5999, 0.4, 0.3999, 0.0)] == \
        ["excellent", "excellent", "good", "good", "average", "average", "poor", "poor"]


def test_each_recommendation_follows_its_gap():
    lora = {"quality": 0.62, "clip": 0.70, "features": 0.70, "ssim": 0.50,
            "rates": {"round face": 0.25, "thin mustache": 1.0}}
    freepik = {"quality": 0.70, "clip": 0.80, "features": 0.75, "ssim": 0.52,
               "rates": {"round face": 0.75, "thin mustache": 0.5}}
    deepai = {"quality": 0.50, "clip": 0.99, "features": 0.99, "ssim": 0.99}
    ceiling = {"quality": 0.90, "clip": 0.90, "features": 0.90, "ssim": 0.60}
    feedback = build_feedback(fake_report({"lora": lora, "freepik": freepik, "deepai": deepai}, ceiling))
    assert feedback["best_competitor"] == "freepik" and feedback["compared_against"] == "freepik"
    assert feedback["lora_score"] == 0.62 and feedback["competitor_score"] == 0.70
    assert feedback["score_gap"] == pytest.approx(0.08) and feedback["needs_improvement"] is True
    assert feedback["band"] == "good" and feedback["ceiling_score"] == 0.90
    gaps = feedback["metric_gaps"]
    assert gaps["clip"]["vs_competitor"] == pytest.approx(0.10) and gaps["clip"]["vs_ceiling"] == pytest.approx(0.20)
    assert gaps["ssim"]["vs_competitor"] == pytest.approx(0.02)
    by_area = {(r["area"], r.get("feature")): r for r in feedback["recommendations"]}
    assert by_area[("clip_similarity", None)]["priority"] == "high"
    assert by_area[("feature_matching", None)]["priority"] == "medium"
    assert by_area[("structural_similarity", None)]["priority"] == "low"
    for rec in feedback["recommendations"]:
        assert rec["priority"] == priority(rec["gap"]) and f"{rec['gap']:.3f}" in rec["message"]
    # per-feature: round face is missed more than freepik; thin mustache is not (LoRA ahead, ceiling equal)
    assert [g["feature"] for g in feedback["feature_gaps"]] == ["round face"]
    assert feedback["feature_gaps"][0]["gap"] == pytest.approx(0.5)
    assert feedback["feature_gaps"][0]["category"] == "face_shape"
    assert by_area[("feature_matching", "round face")]["priority"] == "high"
    priorities = [r["priority"] for r in feedback["recommendations"]]
    assert priorities == sorted(priorities, key=["high", "medium", "low"].index)
    assert set(feedback) >= {"lora_score", "best_competitor", "competitor_score", "score_gap",
                             "needs_improvement", "recommendations"}


def test_metric_where_lora_leads_is_compared_with_the_ceiling():
    lora = {"quality": 0.75, "clip": 0.85, "features": 0.70, "ssim": 0.50}
    rival = {"quality": 0.70, "clip": 0.80, "features": 0.70, "ssim": 0.50}
    ceiling = {"quality": 0.85, "clip": 0.90, "features": 0.705, "ssim": 0.55}
    feedback = build_feedback(fake_report({"lora": lora, "gemini": rival}, ceiling))
    assert feedback["score_gap"] == pytest.approx(-0.05) and feedback["band"] == "good"
    assert feedback["needs_improvement"] is False
    recs = {r["area"]: r for r in feedback["recommendations"]}
    assert recs["clip_similarity"]["against"] == "ceiling" and recs["clip_similarity"]["priority"] == "medium"
    assert recs["structural_similarity"]["against"] == "ceiling" and recs["structural_similarity"]["priority"] == "medium"
    assert "feature_matching" not in recs  # 0.005 behind the ceiling: no gap worth a recommendation


def test_each_metric_holds_the_base_models_mean_whoever_the_best_competitor_is():
    lora = {"quality": 0.6, "clip": 0.7, "features": 0.5, "ssim": 0.5}
    rival = {"quality": 0.7, "clip": 0.8, "features": 0.7, "ssim": 0.5}
    base = {"quality": 0.4, "clip": 0.5, "features": 0.45, "ssim": 0.4}
    ceiling = {"quality": 0.85, "clip": 0.90, "features": 0.8, "ssim": 0.55}
    feedback = build_feedback(fake_report({"lora": lora, "gemini": rival, "base": base}, ceiling), "lora", "base")
    assert feedback["compared_against"] == "gemini"
    assert feedback["metric_gaps"]["features"]["base"] == pytest.approx(0.45)  # the lever rule's lead: +0.05
    assert "base" not in build_feedback(fake_report({"lora": lora, "gemini": rival}, ceiling))["metric_gaps"]["clip"]


def test_no_competitors_compares_with_the_ceiling():
    lora = {"quality": 0.35, "clip": 0.5, "features": 0.25, "ssim": 0.2}
    ceiling = {"quality": 0.8, "clip": 0.9, "features": 0.8, "ssim": 0.5}
    feedback = build_feedback(fake_report({"lora": lora}, ceiling))
    assert feedback["best_competitor"] is None and feedback["competitor_score"] is None
    assert feedback["compared_against"] == "ceiling" and feedback["score_gap"] == pytest.approx(0.45)
    assert feedback["band"] == "poor" and feedback["needs_improvement"] is True
    assert all(r["against"] == "ceiling" and r["priority"] == "high" for r in feedback["recommendations"])
    no_ceiling = build_feedback(fake_report({"lora": lora}, None))
    assert no_ceiling["score_gap"] is None and no_ceiling["recommendations"] == []
    assert no_ceiling["needs_improvement"] is True  # poor band
    with pytest.raises(InputError, match="no generator named 'lora'"):
        build_feedback(fake_report({"freepik": lora}, ceiling))


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("ALDAR_CONFIG", "ALDAR_PROFILE", "ALDAR_OUTPUT_DIR", "ALDAR_ANALYSIS_PATH", "ALDAR_REFERENCES"):
        monkeypatch.delenv(name, raising=False)
    references = make_references(tmp_path / "refs", 3)
    lora = [draw_character(tmp_path / "lora" / f"{i}.png", seed=30 + i) for i in range(2)]
    draw_character(tmp_path / "freepik" / "f.png", seed=40)
    return tmp_path, references, lora


def cli(*args):
    # A references folder without a character.json would take its trigger from the folder's name ("refs").
    return main(["score", "--profile", "tiny", "--device", "cpu", "-q", "--trigger-token", TRIGGER, *map(str, args)])


def test_cli_score_writes_report_feedback_and_analysis(workspace, capsys):
    root, references, lora = workspace
    code = cli("--references", references, "--output-dir", root / "out", "--analysis", root / "m" / "a.json",
               "--images", f"lora={root / 'lora'}", f"freepik={root / 'freepik' / 'f.png'}")
    assert code == 0
    out = capsys.readouterr().out
    assert "ceiling" in out and "freepik" in out
    analysis = json.loads((root / "m" / "a.json").read_text())
    assert analysis["training_prompt"].startswith(TRIGGER)
    [report_file] = (root / "out" / "comparisons").glob("comparison_report_*.json")
    [feedback_file] = (root / "out" / "feedback").glob("feedback_*.json")
    report, feedback = json.loads(report_file.read_text()), json.loads(feedback_file.read_text())
    assert report["generators"]["lora"]["count"] == 2 and report["generators"]["freepik"]["count"] == 1
    assert report["profile"]["notice"] == TINY_NOTICE and feedback["profile"]["profile"] == "tiny"
    assert feedback["best_competitor"] == "freepik" and feedback["comparison_report"] == str(report_file)
    assert report["ceiling"]["count"] == 3
    # the saved analysis is reused (not rewritten) on the next run
    stamp = (root / "m" / "a.json").stat().st_mtime_ns
    assert cli("--references", references, "--output-dir", root / "out", "--analysis", root / "m" / "a.json",
               "--images", root / "lora") == 0
    assert (root / "m" / "a.json").stat().st_mtime_ns == stamp
    assert len(list((root / "out" / "comparisons").glob("*.json"))) == 2


@pytest.mark.parametrize("problem", ["missing-refs", "empty-refs", "zero-byte", "truncated", "too-small",
                                     "not-an-image", "missing-image", "taxonomy", "weights"])
def test_cli_bad_input_exits_2_and_writes_nothing(workspace, capsys, problem):
    root, references, lora = workspace
    args = ["--references", references, "--output-dir", root / "out", "--analysis", root / "m" / "a.json"]
    images = [f"lora={root / 'lora'}"]
    if problem == "missing-refs":
        args[1] = root / "nowhere"
    elif problem == "empty-refs":
        (root / "empty").mkdir()
        args[1] = root / "empty"
    elif problem == "zero-byte":
        (root / "lora" / "z.png").write_bytes(b"")
    elif problem == "truncated":
        data = lora[0].read_bytes()
        lora[0].write_bytes(data[: len(data) // 2])
    elif problem == "too-small":
        Image.new("RGB", (63, 200)).save(root / "lora" / "s.png")
    elif problem == "not-an-image":
        (root / "notes.png").write_text("hello")
        images.append(root / "notes.png")
    elif problem == "missing-image":
        images.append(root / "ghost.png")
    elif problem == "taxonomy":
        (root / "bad.json").write_text('{"categories": {"eyes": ["narrow eyes"]}}')
        args += ["--taxonomy", root / "bad.json"]
    else:
        args += ["--weights", "0.5,0.5,0.5"]
    code = cli(*args, "--images", *images)
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error:")
    assert not (root / "out").exists()
    assert not (root / "m").exists()


@pytest.mark.parametrize("problem", ["output-dir-is-a-file", "analysis-is-a-folder"])
def test_cli_unusable_output_paths_exit_2_before_any_work(workspace, capsys, problem):
    root, references, _ = workspace
    out, analysis = root / "out", root / "m" / "a.json"
    if problem == "output-dir-is-a-file":
        out.write_text("a file")
    else:
        analysis.mkdir(parents=True)
    code = cli("--references", references, "--output-dir", out, "--analysis", analysis, "--images", root / "lora")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error:")
    assert out.is_file() if problem == "output-dir-is-a-file" else not out.exists()
    assert not any(p.is_file() for p in (root / "m").rglob("*")) if (root / "m").exists() else True


def test_images_flag_with_a_name_but_no_path_is_refused(tmp_path, monkeypatch):
    from agent.commands.score import parse_image_groups

    monkeypatch.chdir(tmp_path)
    draw_character(tmp_path / "stray.png", seed=1)  # must not be picked up from the working directory
    with pytest.raises(InputError, match="names no file or folder"):
        parse_image_groups([["lora="]], "lora")
    assert parse_image_groups([["lora=stray.png"]], "x") == {"lora": [Path("stray.png")]}


def test_cli_analyze_prints_key_features_and_prompt(workspace, capsys):
    root, references, _ = workspace
    code = main(["analyze", "--profile", "tiny", "--device", "cpu", "--references", str(references),
                 "--out", str(root / "analysis.json")])
    captured = capsys.readouterr()
    analysis = json.loads((root / "analysis.json").read_text())
    assert code == 0
    assert "training prompt" in captured.out and analysis["key_features"][0] in captured.out
    assert "meaningful inside that world only" in " ".join(captured.err.split())
    bad = root / "bad.json"
    bad.write_text('{"templates": ["no placeholder"], "categories": {"a": ["x", "y"]}}')
    code = main(["analyze", "--profile", "tiny", "--references", str(references), "--taxonomy", str(bad),
                 "--out", str(root / "other.json")])
    assert code == 2 and not (root / "other.json").exists()
    assert "no \"{}\" placeholder" in capsys.readouterr().err


def test_cli_redoes_a_stale_analysis_and_checks_the_taxonomy(workspace):
    root, references, _ = workspace
    analysis_file = root / "m" / "a.json"
    common = ["--references", references, "--output-dir", root / "out", "--analysis", analysis_file,
              "--images", root / "lora"]
    assert cli(*common) == 0
    own = root / "own.json"
    own.write_text(json.dumps({"templates": ["{}"], "categories": {"eyes": ["narrow eyes", "round eyes"]}}))
    assert cli(*common, "--taxonomy", own) == 0  # another taxonomy: analysis made again
    redone = json.loads(analysis_file.read_text())
    assert redone["taxonomy"]["path"] == str(own) and redone["key_features"] in (["narrow eyes"], ["round eyes"])
    own.write_text(json.dumps({"categories": {"eyes": ["narrow eyes"]}}))
    before = analysis_file.read_text()
    reports = len(list((root / "out" / "comparisons").glob("*.json")))
    assert cli(*common, "--taxonomy", own) == 2  # malformed even though an analysis exists
    assert analysis_file.read_text() == before
    assert len(list((root / "out" / "comparisons").glob("*.json"))) == reports


def test_variety_is_zero_for_copies_and_grows_with_spread():
    a, b = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert variety(torch.stack([a, a, a])) == pytest.approx(0.0, abs=1e-6)
    assert variety(torch.stack([a, b])) == pytest.approx(1.0)  # orthogonal: 1 - cos 90°
    assert variety(a[None]) is None  # one image has no variety to measure
