"""Files the config names are part of the run key: editing one in place re-publishes."""

from __future__ import annotations

import pytest

from flows.plan import plan_run
from schemas.config import ConfigError, parse_config
from tests.pool_factory import make_samples, write_tar


def test_metadata_and_heads_edited_in_place_change_the_run_key(tmp_path):
    write_tar(tmp_path / "in" / "00000.tar", make_samples(2))
    meta = tmp_path / "metadata.json"
    meta.write_text('["dog", "cat"]')
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"one")
    raw = {
        "output": str(tmp_path / "out"),
        "model": {"name": "ViT-B-32", "pretrained": None},
        "pool": {
            "input": str(tmp_path / "in" / "*.tar"),
            "balance": {"metadata": str(meta)},
            "heads": {"aesthetic": {"path": str(head)}},
        },
    }
    cfg = parse_config(raw)
    first = plan_run(cfg, "pool", "2026-01-01")
    assert set(first.files) == {"pool.balance.metadata", "pool.heads.aesthetic.path"}
    meta.write_text('["dog", "cow"]')
    second = plan_run(cfg, "pool", "2026-01-01")
    assert second.key != first.key
    head.write_bytes(b"two")
    assert plan_run(cfg, "pool", "2026-01-01").key not in (first.key, second.key)
    head.unlink()
    with pytest.raises(ConfigError, match=r"^config: invalid value for 'pool\.heads\.aesthetic"):
        plan_run(cfg, "pool", "2026-01-01")
