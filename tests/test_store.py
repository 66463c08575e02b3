"""Run store: the folder lock, the history file, best LoRA, and report.html with its PIL chart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from agent.rounds.documents import round_of
from agent.rounds.session import Session
from agent.rounds.store import LOCK_FILE, RunStore
from agent.views.chart import chart_series, draw_score_chart
from agent.views.report import write_report
from tools.errors import BusyError, InputError


def test_second_session_on_the_same_folder_is_refused(tiny_settings):
    first = Session(tiny_settings, quiet=True)
    try:
        with pytest.raises(BusyError) as caught:
            Session(tiny_settings, quiet=True)
        message = str(caught.value)
        assert f"process {os.getpid()} on {socket.gethostname()}" in message
        assert "--output-dir" in message  # the fix
    finally:
        first.close()
    Session(tiny_settings, quiet=True).close()  # released: the next one gets it


def test_lock_held_by_another_process_names_it(tmp_path):
    # The holder keeps the lock until it is killed (it waits on its stdin), however long the machine takes.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from agent.rounds.store import RunStore
        RunStore({str(tmp_path)!r})
        print("held", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match=f"process {holder.pid} on "):
            RunStore(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    store = RunStore(tmp_path)  # the kernel dropped the dead holder's lock: taken over
    assert store.lock.previous_holder["pid"] == holder.pid
    store.close()


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tiny_settings):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = Path(tiny_settings.output_dir)
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    with Session(tiny_settings, quiet=True) as session:
        assert session.store.lock.previous_holder["pid"] == dead.pid
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()


def _record(number: int, score: float, store: RunStore) -> dict:
    lora = store.round_run_dir(number) / "pytorch_lora_weights.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(f"weights of round {number}".encode())
    image = store.round_images_dir(number, "lora") / "lora_0.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 100, 50)).save(image)
    return {"round": number, "lora_score": score, "params": {"steps": 30}, "rationale": "r", "decided_by": "rule-policy",
            "scores": {"lora": {"quality": score, "quality_std": 0.01}, "base": {"quality": 0.5}},
            "ceiling": {"quality": 0.9}, "decision": {"adjustments": {}},
            "paths": {"lora": store.relative(lora), "run_dir": store.relative(lora.parent),
                      "images": {"lora": [store.relative(image)]}}}


def test_history_rounds_in_progress_and_best_lora(tmp_path):
    store = RunStore(tmp_path / "results", {"profile": "tiny"})
    store.begin_round(1, {"steps": 30})
    saved = json.loads(store.history_path.read_text())
    assert saved["in_progress"]["round"] == 1 and saved["rounds"] == []
    store.finish_round(_record(2, 0.7, store))
    store.finish_round(_record(1, 0.6, store))
    store.finish_round(_record(1, 0.65, store))  # a rerun of round 1 replaces it
    saved = json.loads(store.history_path.read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2] and saved["rounds"][0]["lora_score"] == 0.65
    assert saved["in_progress"] is None
    store.mark_best(saved["rounds"][1])
    saved = json.loads(store.history_path.read_text())
    assert saved["best_round"] == 2 and saved["best_lora"] == "best_lora/pytorch_lora_weights.safetensors"
    assert (store.root / saved["best_lora"]).read_bytes() == b"weights of round 2"
    assert json.loads((store.best_lora_dir / "best_lora.json").read_text())["round"] == 2
    assert not list(store.root.rglob("*.tmp"))  # atomic writes leave no temp files
    store.close()
    reopened = RunStore(tmp_path / "results")
    assert [r.round for r in reopened.rounds] == [1, 2]
    reopened.close()


def test_unreadable_history_is_an_input_error_and_the_lock_is_released(tmp_path):
    (tmp_path / "training_history.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        RunStore(tmp_path)
    (tmp_path / "training_history.json").unlink()
    RunStore(tmp_path).close()  # not BusyError: the failed open let go of the lock


def test_original_list_history_is_read(tmp_path):
    (tmp_path / "training_history.json").write_text(json.dumps([{"round": 1, "lora_score": 0.5}]))
    store = RunStore(tmp_path)
    assert store.rounds == [round_of({"round": 1, "lora_score": 0.5})] and store.state.in_progress is None
    # The newer keys the original system never wrote read as their defaults, filled once at load.
    old = store.rounds[0]
    assert (old.lora_score, old.params, old.scores, old.suite, old.train.checkpoint_scores) == (0.5, {}, {}, None, ())
    assert store.feedback(1) is None and store.best_record() is None
    store.close()


def test_a_round_and_its_feedback_from_before_the_newer_keys_load_with_their_defaults(tmp_path, references_dir):
    """A history and a feedback file written before checkpoint scores, warm starts, the prompt suite, copies and
    the training curve existed: the store's loader fills what they lack, once, and every reader works on them."""
    from agent.llm.tools import feedback_summary, round_summary
    from agent.rounds.policy import RulePolicy, read_signals
    from agent.views.render import compute_text, feedback_lines, record_scores, suite_scores

    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "feedback_20251101_120000.json").write_text(json.dumps(
        {"lora_score": 0.55, "band": "average", "metric_gaps": {"clip": {"lora": 0.5}},
         "feature_gaps": [{"feature": "skullcap", "lora_pass_rate": 0.25}],
         "overfitting": {"max_reference_clip": 0.97, "max_reference_ssim": 0.9, "variety": 0.2}}))
    old = {"round": 1, "lora_score": 0.55, "params": {"steps": 30}, "prompts": ["aldarkose"],
           "scores": {"lora": {"quality": 0.55, "quality_std": 0.02, "count": 4}, "base": {"quality": 0.5}},
           "train": {"steps": 30, "final_loss": 0.1}, "timings_s": {"train": 12.5},
           "paths": {"feedback": "feedback/feedback_20251101_120000.json"}}
    (tmp_path / "training_history.json").write_text(json.dumps({"rounds": [old]}))
    store = RunStore(tmp_path)
    record, feedback = store.record(1), store.feedback(1)
    assert record.base_prompts == record.prompts == ("aldarkose",)  # the base drew the same prompt then
    assert record.train.seconds == 12.5 and record.train.checkpoint_scores == () and record.train.warm_start is None
    assert record.suite is None and record.ceiling is None and not record.scores["lora"].memorised
    assert feedback.training is None and feedback.suite.identity is None and feedback.lora_spread is None
    # no reference_copies count: the copy is read off the closest CLIP and SSIM, as before the count existed
    assert feedback.overfitting.reference_copies is None and feedback.overfitting.copies_reference
    assert read_signals(feedback).missed_features == ["skullcap"] and read_signals(feedback).copies_reference
    assert "nearly copies one reference" in RulePolicy().decide(feedback, store.rounds, {"steps": 30}).rationale
    assert feedback_summary(feedback)["overfitting"] == {"max_reference_clip": 0.97, "max_reference_ssim": 0.9,
                                                         "variety": 0.2}  # as written: no invented count
    assert round_summary(record)["compute"]["train_seconds"] == 12.5 and suite_scores(record) is None
    assert compute_text(record) == "compute: 30 optimiser steps, 12.5 s training; a fresh LoRA"
    assert record_scores(record).rows[0][0] == "lora" and feedback_lines(feedback)[0][1].startswith("LoRA lora: 0.550")
    assert write_report(store, references_dir, store.rounds).is_file()
    store.close()
    assert json.loads((tmp_path / "training_history.json").read_text()) == {"rounds": [old]}  # read, not rewritten


def test_score_chart_png_draws_one_line_per_generator_with_axes():
    history = [{"round": 1, "scores": {"lora": {"quality": 0.4}, "base": {"quality": 0.3}}, "ceiling": {"quality": 0.9}},
               {"round": 2, "scores": {"lora": {"quality": 0.6}, "base": {"quality": 0.3}}, "ceiling": {"quality": 0.9}}]
    assert chart_series(history) == {"lora": [(1, 0.4), (2, 0.6)], "base": [(1, 0.3), (2, 0.3)],
                                     "reference ceiling": [(1, 0.9), (2, 0.9)]}
    chart = draw_score_chart(history)
    assert chart.size == (960, 420)
    colours = {colour for _, colour in chart.getcolors(maxcolors=1000000)}
    assert (214, 96, 20) in colours and (31, 119, 180) in colours and (90, 90, 90) in colours
    # The y axis is a dark vertical line at x=64 from the top to the bottom of the plot.
    assert all(max(chart.getpixel((64, y))) < 60 for y in range(50, 360, 20))


def test_report_html_opens_offline_with_relative_existing_files(tmp_path, references_dir):
    store = RunStore(tmp_path / "results", {"profile": "tiny", "notice": "scores check the pipeline, not quality"})
    history = [_record(1, 0.6, store)]
    store.finish_round(history[0])
    page_path = write_report(store, references_dir, history)
    page = page_path.read_text()
    assert "Toy world, not real SDXL" in page and "http" not in page.replace("http-equiv", "").replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    sources = [part.split('"', 1)[0] for part in page.split('src="')[1:]]
    assert len(sources) == 2 * (5 + 1)  # references and the round's image, each in its grid and its full view
    links = [part.split('"', 1)[0] for part in page.split('href="')[1:]]
    for source in sources + [link for link in links if not link.startswith("#")]:
        assert not Path(source).is_absolute() and (store.root / source).is_file(), source
    for anchor in {link[1:] for link in links if link.startswith("#")}:
        assert f'id="{anchor}"' in page, anchor  # every click-to-enlarge and close link has its target
    assert Image.open(store.chart_path).size == (960, 420)
    store.close()


def test_report_says_inside_each_round_which_checkpoint_became_its_lora(tmp_path, references_dir):
    store = RunStore(tmp_path / "results", {"profile": "tiny"})
    chosen = _record(1, 0.6, store)
    chosen["train"] = {"steps": 30, "checkpoint_scores": [{"step": 10, "quality": 0.41}, {"step": 20, "quality": 0.5234},
                                                          {"step": 30, "quality": 0.47}],
                       "chosen_checkpoint": {"step": 20, "quality": 0.5234, "why": "highest validation quality"}}
    older = _record(2, 0.5, store)  # a history from before checkpoints were scored: no train.chosen_checkpoint
    store.finish_round(chosen)
    store.finish_round(older)
    page = write_report(store, references_dir, [chosen, older]).read_text()
    store.close()
    first, second = page.split("<h2>Round 1")[1].split("<h2>Round 2")
    assert "<strong>LoRA used: checkpoint at step 20</strong> — highest validation quality" in first
    assert '<tr class="chosen"><td>step 20</td><td>0.523</td><td>LoRA</td></tr>' in first
    assert "<tr><td>step 10</td><td>0.410</td><td></td></tr>" in first
    assert "LoRA used" not in second and "LoRA used" not in page.split("<h2>Round 1")[0]


def test_lock_file_is_emptied_on_close(tmp_path):
    store = RunStore(tmp_path)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    store.close()
    assert (tmp_path / LOCK_FILE).read_text() == ""
    again = RunStore(tmp_path)  # an emptied lock file is free, and names no previous holder
    assert again.lock.held and again.lock.previous_holder is None
    again.close()


def test_a_folder_with_rounds_of_other_models_is_refused(tiny_settings):
    folder = Path(tiny_settings.output_dir)
    folder.mkdir(parents=True)
    (folder / "training_history.json").write_text(json.dumps(
        {"profile": {"profile": "sdxl", "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
                     "clip_model": "openai/clip-vit-large-patch14"}, "rounds": [{"round": 1}]}))
    with pytest.raises(InputError, match="other models .*profile 'sdxl' → 'tiny'"):
        Session(tiny_settings, quiet=True)
    (folder / "training_history.json").unlink()
    Session(tiny_settings, quiet=True).close()  # the refusal released the lock


def test_temp_files_a_killed_writer_left_are_removed_when_the_folder_is_opened(tmp_path):
    results = tmp_path / "results"
    leftover = results / "runs" / "round_01" / ".loss_curve.png.k3j2.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a png")
    kept = results / "runs" / "round_01" / "loss_log.csv"
    kept.write_text("step,loss\n")
    store = RunStore(results)
    try:
        assert not leftover.exists() and kept.read_text() == "step,loss\n"
    finally:
        store.close()


def test_opening_the_folder_keeps_temp_files_of_writers_that_work_without_the_lock(tmp_path):
    # `aldar train`, `generate`, `score` and `story` write into the results folder without its lock:
    # their in-flight temp files must survive another process opening the folder.
    results = tmp_path / "results"
    own = [results / ".training_history.json.a1.tmp", results / "comparisons" / "round_02" / "lora" / ".x.png.b2.tmp",
           results / "best_lora" / ".best_lora.json.c3.tmp", results / "chat" / ".transcript.json.d4.tmp",
           results / "feedback" / ".feedback_20261125_150000_round02.json.i9.tmp",
           results / "comparisons" / ".comparison_report_20261125_150000_round02.json.j0.tmp"]
    foreign = [results / "runs" / "train_20261125_150000" / ".pytorch_lora_weights.safetensors.e5.tmp",
               results / "comparisons" / ".freepik_20261125_150000_0.png.f6.tmp",
               results / "feedback" / ".feedback_20261125_150000.json.g7.tmp",
               results / "stories" / "20261125_150000_tale" / ".story.json.h8.tmp"]
    for path in own + foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    store = RunStore(results)
    try:
        assert [p for p in own if p.exists()] == []
        assert [p for p in foreign if not p.exists()] == []
    finally:
        store.close()


def test_the_best_loras_trigger_embedding_travels_with_it_and_an_earlier_ones_does_not_stay(tmp_path):
    """Pivotal tuning: best_lora/ holds the best round's embeddings/<trigger>.safetensors beside its LoRA (the generator
    loads it from there); a later best round trained without one leaves no stale embedding behind."""
    store = RunStore(tmp_path / "results", {"profile": "tiny"})
    first, second = _record(1, 0.6, store), _record(2, 0.7, store)
    embedding = store.round_run_dir(1) / "embeddings" / "zorabek.safetensors"
    embedding.parent.mkdir()
    embedding.write_bytes(b"rows of round 1")
    store.finish_round(first)
    store.mark_best(first)
    copied = store.best_lora_dir / "embeddings" / "zorabek.safetensors"
    assert copied.read_bytes() == b"rows of round 1"
    listed = json.loads((store.best_lora_dir / "best_lora.json").read_text())["files"]
    assert "best_lora/embeddings/zorabek.safetensors" in listed
    store.finish_round(second)
    store.mark_best(second)
    assert not copied.exists() and store.best_lora_holds(second)
    store.close()


def test_ctrl_c_while_copying_the_best_lora_leaves_best_round_unchanged_and_is_redone(tmp_path, monkeypatch):
    import shutil

    store = RunStore(tmp_path / "results", {"profile": "tiny"})
    record = _record(1, 0.6, store)
    store.finish_round(record)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.mark_best(record)
    assert store.state.best_round is None  # so the next _update_best copies it again
    monkeypatch.undo()
    store.mark_best(record)
    assert store.state.best_round == 1
    assert (store.root / store.state.best_lora).read_bytes() == b"weights of round 1"
    store.close()


def test_ctrl_c_after_a_round_is_recorded_does_not_leave_it_in_progress(tiny_settings, monkeypatch):
    from agent.rounds.decision import Decision

    with Session(tiny_settings, quiet=True) as session:
        monkeypatch.setattr(session, "_update_best", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            session.finish_round(Decision({"steps": 7}, "test", "user"))
        assert [r.round for r in session.history()] == [1]
        assert session.current is None and session.next_round_number == 2
        assert session.params["steps"] == 7  # the next round trains with the decision


def test_a_session_continues_the_original_list_history_from_the_default_params(tiny_settings):
    folder = Path(tiny_settings.output_dir)
    folder.mkdir(parents=True)
    (folder / "training_history.json").write_text(json.dumps([{"round": 1, "lora_score": 0.5}]))
    with Session(tiny_settings, quiet=True) as session:
        assert session.params == session.default_params and session.next_round_number == 2


def test_every_text_file_and_png_chunk_the_project_writes_is_scrubbed_of_keys(tmp_path, monkeypatch) -> None:
    """The sinks scrub too: text from a model or a server that reaches a writer without passing the entry
    scrub (a feedback's rationale, a report's prompt, a picture's metadata) still loses the key."""
    from PIL import Image

    from tools.atomic import atomic_write_json, atomic_write_text
    from tools.generation.png_metadata import save_png_with_parameters

    key = "fpk-SINK-0123456789abcdef"
    monkeypatch.setenv("FREEPIK_API_KEY", key)
    atomic_write_json(tmp_path / "feedback.json", {"rationale": f"because {key}", key: 1})
    atomic_write_text(tmp_path / "report.html", f"<p>{key}</p>")
    save_png_with_parameters(Image.new("RGB", (8, 8)), tmp_path / "scene.png", {"prompt": f"a {key}", "seed": 1},
                             {"note": key})
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert key.encode() not in data and b"***" in data, path.name


def test_staging_folders_a_killed_checkpoint_write_left_are_removed_when_the_folder_is_opened(tmp_path, monkeypatch):
    """A kill -9 inside ``save_checkpoint`` skips its cleanup: the staging folder it made (the writer's own
    name, not a copy of it) and those older versions named ``.checkpoint-XXXX-*`` / ``.lora-*`` go at start-up."""
    import torch

    import tools.training.lora_files as lora_files

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    results = tmp_path / "results"
    run_dir = results / "runs" / "round_01"
    run_dir.mkdir(parents=True)
    finished = run_dir / "checkpoint-000002"
    finished.mkdir()
    (finished / "checkpoint.json").write_text("{}")
    monkeypatch.setattr(lora_files, "save_diffusers_lora", killed)
    monkeypatch.setattr(lora_files.shutil, "rmtree", lambda *a, **k: None)  # a kill runs no finally
    with pytest.raises(Killed):
        lora_files.save_checkpoint(run_dir, 4, {"unet": {"w": torch.zeros(1)}}, {"unet": {}}, {}, keep=2)
    monkeypatch.undo()
    [staging] = [p for p in run_dir.iterdir() if p.name.startswith(".checkpoint-000004")]
    (staging / ".pytorch_lora_weights.safetensors.x1.tmp").write_bytes(b"half")
    legacy = [run_dir / ".checkpoint-000006-ab12cd", run_dir / ".lora-9zq8", run_dir / "checkpoint-000002" / ".lora-7u"]
    for folder in legacy:
        folder.mkdir()
        (folder / "pytorch_lora_weights.safetensors").write_bytes(b"half")
    foreign = results / "runs" / "train_20261125_150000" / ".checkpoint-000004.k2.tmp"
    foreign.mkdir(parents=True)  # `aldar train` writes there without the lock: maybe live

    RunStore(results).close()

    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-000002"]
    assert (finished / "checkpoint.json").is_file() and not (finished / ".lora-7u").exists()
    assert foreign.is_dir()


def test_one_timestamp_format_for_file_names_and_one_for_json_fields():
    import re
    import time

    from tools.timestamps import ISO_FORMAT, iso_timestamp, timestamp

    when = time.mktime((2026, 11, 25, 14, 0, 5, 0, 0, -1))
    assert timestamp(when) == "20261125_140005"
    assert iso_timestamp(when).startswith("2026-11-25T14:00:05") and time.strptime(iso_timestamp(when), ISO_FORMAT)
    assert re.fullmatch(r"\d{8}_\d{6}_round03", RunStore.timestamp(3))  # the rounds' report and feedback names
