"""Score stage: clip_score equals a naive one-pair-at-a-time computation; caching by key."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from schemas.config import PoolConfig
from tasks.io import storage
from tasks.model.clip import load_model
from tasks.pool.score import score_shard
from tests.pool_factory import broken_pool, make_samples, write_tar


def naive_score(model, image: bytes, caption: str) -> float:
    """Independent reference: open_clip's own preprocess, one pair, fp32, no batching."""
    m = model.model
    with torch.no_grad():
        x = model.preprocess(Image.open(io.BytesIO(image)).convert("RGB")).unsqueeze(0)
        img = m.encode_image(x)[0]
        txt = m.encode_text(model.tokenizer([caption]))[0]
    img = img / img.norm()
    txt = txt / txt.norm()
    return float((img * txt).sum())


def test_clip_score_matches_naive(tmp_path, model_cfg):
    samples = make_samples(19, seed=3)
    shard = write_tar(tmp_path / "a.tar", samples)
    pool = PoolConfig(input=str(shard))
    res = score_shard(str(shard), pool, model_cfg, str(tmp_path / "cache"))
    table = storage.read_parquet(res.table)
    model = load_model(model_cfg)
    assert table.height == 19
    for s, row in zip(samples, table.iter_rows(named=True), strict=True):
        assert row["key"] == s.key
        assert row["clip_score"] == pytest.approx(naive_score(model, s.image, s.caption), abs=1e-5)
    emb = storage.read_npy(res.embeddings)
    assert emb.dtype == np.float16 and emb.shape == (19, 64)
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=1e-2)


def test_cached_shard_is_not_rescored(tmp_path, model_cfg, monkeypatch):
    shard = write_tar(tmp_path / "a.tar", make_samples(5))
    pool = PoolConfig(input=str(shard))
    first = score_shard(str(shard), pool, model_cfg, str(tmp_path / "cache"))
    assert not first.cached

    def boom(*a, **k):
        raise AssertionError("model used for a cached shard")

    monkeypatch.setattr("tasks.pool.score.load_model", boom)
    second = score_shard(str(shard), pool, model_cfg, str(tmp_path / "cache"))
    assert second.cached and second.key == first.key
    # a changed input gets a new key and is scored again
    write_tar(tmp_path / "a.tar", make_samples(6))
    with pytest.raises(AssertionError, match="model used"):
        score_shard(str(shard), pool, model_cfg, str(tmp_path / "cache"))


def test_bad_samples_are_quarantined_with_reasons(tmp_path, model_cfg):
    path, expected = broken_pool(tmp_path / "broken.tar")
    pool = PoolConfig(input=str(path))
    res = score_shard(str(path), pool, model_cfg, str(tmp_path / "cache"))
    table = storage.read_parquet(res.table)
    got = dict(zip(table["key"], table["error"], strict=True))
    decoder = {
        "corrupt": "image_decode_error",
        "cut": "truncated_image",
        "bomb": "decompression_bomb",
    }
    expected = [(k, decoder.get(k, r)) for k, r in expected]
    for key, reason in expected:
        assert key in got, key
        if reason is None:
            assert got[key] is None, (key, got[key])
        else:
            assert got[key] is not None and got[key].startswith(reason), (key, got[key], reason)
    scored = table.filter(table["error"].is_null())
    assert scored["clip_score"].null_count() == 0


def test_text_tower_runs_once_per_distinct_caption(tmp_path, model_cfg, monkeypatch):
    """Repeated captions (boilerplate alt-texts) are embedded once per shard, and every
    repeat still gets the score of its own image with that caption."""
    samples = make_samples(30, seed=4)
    for i, s in enumerate(samples):
        s.caption = "click to enlarge" if i % 3 else f"a distinct caption number {i}"
    shard = write_tar(tmp_path / "a.tar", samples)
    model = load_model(model_cfg)
    embedded: list[int] = []
    real = type(model).encode_tokens
    monkeypatch.setattr(
        type(model), "encode_tokens", lambda self, t: embedded.append(len(t)) or real(self, t)
    )
    res = score_shard(str(shard), PoolConfig(input=str(shard)), model_cfg, str(tmp_path / "c"))
    assert sum(embedded) == 11 == res.stats["counts"]["distinct_captions"]  # 10 + boilerplate
    table = storage.read_parquet(res.table)
    for s, row in zip(samples, table.iter_rows(named=True), strict=True):
        assert row["clip_score"] == pytest.approx(naive_score(model, s.image, s.caption), abs=1e-5)
