"""Every cache follows ``$ALDAR_CACHE``; an empty value means the default, never the current folder."""

from __future__ import annotations

from pathlib import Path


def test_every_cache_moves_with_aldar_cache_and_an_empty_value_means_the_default(monkeypatch, tmp_path):
    from agent.views.repl import history_file
    from tools.paths import aldar_cache
    from tools.scoring.embedding_cache import default_cache_dir
    from tools.training.data import default_latent_cache_dir
    from tools.world.build import default_cache

    monkeypatch.setenv("ALDAR_CACHE", str(tmp_path))
    assert [history_file(), default_cache_dir(), default_latent_cache_dir(), default_cache()] == [
        tmp_path / "chat_history", tmp_path / "embeddings", tmp_path / "latents", tmp_path / "world-build"]
    monkeypatch.setenv("ALDAR_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert aldar_cache("latents") == Path(tmp_path / "home" / ".cache" / "aldar" / "latents")
    assert default_latent_cache_dir().is_absolute()
