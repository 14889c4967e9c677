"""The video flow's head file: pinned by its sha256, refused for another model in one line."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from schemas.config import ConfigError, parse_config
from tasks.video.head import fit_gda, save_head
from tasks.video.headfile import load_run_head, pin_head

IDENTITY = {
    "name": "ViT-B-32",
    "architecture": "ViT-B-32",
    "architecture_sha256": "a" * 64,
    "pretrained": "laion2b_s34b_b79k",
    "checkpoint_sha256": "c" * 64,
}


def head_bytes(identity: dict, alpha: float = 0.5) -> bytes:
    x = np.array([[1.0, 0.1, 0.0], [0.9, 0.0, 0.1], [0.0, 1.0, 0.1], [0.1, 0.9, 0.0]])
    return save_head(fit_gda(x, np.array([0, 0, 1, 1])), alpha, identity, "prompts")


def config(head: str | None, **video) -> dict:
    return {"video": {"input": "v/*.mp4", "head": head, **video}}


def test_pin_puts_the_files_sha256_into_the_config(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(head_bytes(IDENTITY))
    cfg = pin_head(parse_config(config(str(path))))
    assert cfg.video.head_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cfg.model_dump()["video"]["head_sha256"] == cfg.video.head_sha256  # in the run key
    assert pin_head(parse_config(config(None))).video.head_sha256 is None

    path.write_bytes(head_bytes(IDENTITY, alpha=0.7))  # the file changed under a pinned config
    with pytest.raises(ConfigError, match=r"video.head.*not the pinned"):
        pin_head(cfg)
    with pytest.raises(ConfigError, match=r"video.head.*not the pinned"):
        load_run_head(cfg.video, IDENTITY, None)
    with pytest.raises(ConfigError, match="head_sha256 pins a head file"):
        parse_config(config(None, head_sha256="0" * 64))


def test_a_head_for_another_model_or_no_head_file_is_one_config_line(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(head_bytes(IDENTITY))
    video = parse_config(config(str(path))).video
    run = load_run_head(video, IDENTITY, None)
    assert (
        run is not None
        and run.alpha == 0.5
        and run.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    other = {**IDENTITY, "checkpoint_sha256": "d" * 64}
    with pytest.raises(ConfigError) as err:
        load_run_head(video, other, None)
    line = str(err.value)
    assert "\n" not in line and line.startswith("config: invalid value for 'video.head'")
    assert str(path) in line and "head was made for model" in line
    missing = parse_config(config(str(tmp_path / "nope.safetensors"))).video
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_head(missing, IDENTITY, None)
    assert load_run_head(parse_config(config(None)).video, IDENTITY, None) is None
