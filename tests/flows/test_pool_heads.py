"""Embedding heads in the pool flow (`pool.heads`): a head converted with `curate heads
convert` scores the cached image embeddings (no CLIP re-run), filters on its range, and is
refused when made for another model. Expected values come from the torch module itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from torch import nn

from flows.cli import main
from flows.pool import run_pool
from schemas.config import ConfigError, parse_config
from tests.helpers import published_dir
from tests.pool_factory import make_samples, write_tar

DAY = "2026-05-01"


def config(tmp_path: Path, tiny_model: dict, heads: dict | None = None) -> dict:
    return {
        "dataset": "h",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {
            "input": str(tmp_path / "in" / "*.tar"),
            "text_filter": {"enabled": False},
            **({"heads": heads} if heads else {}),
        },
    }


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))


def convert(tmp_path: Path, cfg: dict, module: nn.Module, name: str) -> Path:
    state = tmp_path / f"{name}.pt"
    torch.save(module.state_dict(), state)
    cfg_file = tmp_path / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"{name}.safetensors"
    argv = ["heads", "convert", str(state), "--model-config", str(cfg_file), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_head_scores_and_filters_without_rescoring(tmp_path, tiny_model, prefect_harness):
    write_tar(tmp_path / "in" / "00000.tar", make_samples(16, seed=3))
    base = config(tmp_path, tiny_model)
    module = mlp(0)
    head = convert(tmp_path, base, module, "aesthetic")
    first = run_pool(parse_config(base), DAY)  # no head yet: scores cached
    emb = np.load(next((tmp_path / "out" / "h" / "_cache").rglob("emb.npy")))
    x = torch.from_numpy(emb.astype(np.float32))
    with torch.no_grad():
        want = module(x / x.norm(dim=1, keepdim=True)).squeeze(1).numpy()
    cut = float(np.median(want))
    cfg = config(tmp_path, tiny_model, {"aesthetic": {"path": str(head), "min": cut}})
    result = run_pool(parse_config(cfg), DAY)
    assert result["status"] == "published" and first["status"] == "published"
    root = published_dir(result["uri"])
    stats = json.loads((root / "stats.json").read_text())
    assert (stats["shards"]["scored"], stats["shards"]["cached"]) == (0, 1)
    df = pl.read_parquet(root / "samples.parquet")
    embedded = df.filter(pl.col("clip_score").is_not_null())
    got = embedded["aesthetic"].to_numpy()
    assert len(got) == len(want)  # one shard: embedding rows are the embedded rows, in order
    assert np.allclose(got, want, atol=1e-5)
    low = embedded.filter(pl.col("aesthetic") < cut)
    assert set(low["status"]) == {"filtered_head"} and set(low["error"]) == {"head:aesthetic"}
    assert set(embedded.filter(pl.col("aesthetic") >= cut)["status"]) == {"kept"}
    # the head's bytes are in the run key: a new head at the same path re-publishes
    manifest = json.loads((Path(result["uri"]) / "manifest.json").read_text())
    assert set(manifest["config_files"]) == {"pool.heads.aesthetic.path"}
    convert(tmp_path, base, mlp(1), "aesthetic")
    again = run_pool(parse_config(cfg), DAY)
    assert again["status"] == "published"
    new = pl.read_parquet(published_dir(again["uri"]) / "samples.parquet")
    assert not np.allclose(new.filter(pl.col("clip_score").is_not_null())["aesthetic"], got)


def test_head_for_another_model_is_refused(tmp_path, tiny_model, capsys, prefect_harness):
    write_tar(tmp_path / "in" / "00000.tar", make_samples(4, seed=4))
    other = dict(tiny_model, pretrained=None)  # same architecture, other (no) checkpoint
    head = convert(tmp_path, config(tmp_path, other), mlp(0), "other")
    cfg = config(tmp_path, tiny_model, {"aesthetic": {"path": str(head), "max": 1.0}})
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["run", "pool", "-c", str(cfg_file), "--partition", DAY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pool.heads.aesthetic.path" in err[0] and "head was made" in err[0]
    assert not (tmp_path / "out" / "h" / "pool" / DAY / "_SUCCESS").exists()
    # refused before any shard was scored: a wrong head costs no CLIP time
    assert not list((tmp_path / "out").rglob("emb.npy"))


def test_head_names_cannot_shadow_columns():
    with pytest.raises(ConfigError, match=r"already a samples\.parquet column"):
        parse_config({"pool": {"input": "x/*.tar", "heads": {"status": {"path": "h"}}}})


def test_each_shards_embeddings_are_read_once_per_run(tmp_path, tiny_model, prefect_harness,
                                                      monkeypatch):  # fmt: skip
    """Semantic dedup, a head and the dedup index each need the cached embeddings; the run
    reads each shard's file once (it read them three times)."""
    from tasks.io import storage

    for i in range(2):
        write_tar(tmp_path / "in" / f"{i:05d}.tar", make_samples(8, seed=20 + i))
    base = config(tmp_path, tiny_model)
    head = convert(tmp_path, base, mlp(1), "aesthetic")
    cfg = config(tmp_path, tiny_model, {"aesthetic": {"path": str(head)}})
    cfg["pool"]["dedup"] = {"semantic": {"threshold": 0.99}, "scope": "dataset"}
    run_pool(parse_config(cfg), DAY)  # scores cached; the counted run reads from the cache
    reads: dict[str, int] = {}
    real = storage.read_npy

    def counting(url, *a, **k):
        reads[url] = reads.get(url, 0) + 1
        return real(url, *a, **k)

    monkeypatch.setattr(storage, "read_npy", counting)
    run_pool(parse_config(cfg), DAY, force=True)
    shard_files = {u: n for u, n in reads.items() if "_cache" in u}
    assert len(shard_files) == 2 and set(shard_files.values()) == {1}, reads
