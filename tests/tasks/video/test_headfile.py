"""The video flow's head file: its planned bytes only (the one mechanism of `config_files` and
`read_planned`), refused for another model in one line."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from flows.plan import config_files
from flows.video import load_head_file
from schemas.config import ConfigError, parse_config
from tasks.video.head import fit_gda, save_head

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


def load(cfg, identity=IDENTITY):
    return load_head_file(cfg, config_files(cfg, "video"), identity)


def test_the_heads_sha256_is_planned_and_its_bytes_are_the_planned_ones(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(head_bytes(IDENTITY))
    cfg = parse_config(config(str(path)))
    files = config_files(cfg, "video")
    assert files == {"video.head": hashlib.sha256(path.read_bytes()).hexdigest()}  # run key
    assert config_files(parse_config(config(None)), "video") == {}
    path.write_bytes(head_bytes(IDENTITY, alpha=0.7))  # the file changed after planning
    with pytest.raises(ConfigError, match=r"video.head.*changed while the run was going"):
        load_head_file(cfg, files, IDENTITY)
    # a pin of the user's own refuses any other bytes when planning
    pinned = parse_config(config(str(path), head_sha256="0" * 64))
    with pytest.raises(ConfigError, match=r"video.head.*not the pinned"):
        config_files(pinned, "video")
    with pytest.raises(ConfigError, match="head_sha256 pins a head file"):
        parse_config(config(None, head_sha256="0" * 64))


def test_a_head_for_another_model_or_no_head_file_is_one_config_line(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(head_bytes(IDENTITY))
    cfg = parse_config(config(str(path)))
    run = load(cfg)
    assert run.alpha == 0.5 and run.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    other = {**IDENTITY, "checkpoint_sha256": "d" * 64}
    with pytest.raises(ConfigError) as err:
        load(cfg, other)
    line = str(err.value)
    assert "\n" not in line and line.startswith("config: invalid value for 'video.head'")
    assert str(path) in line and "head was made for model" in line
    missing = parse_config(config(str(tmp_path / "nope.safetensors")))
    with pytest.raises(ConfigError, match="cannot read"):
        config_files(missing, "video")


def test_the_same_head_is_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its header from a hash map, in an order that differs per process;
    a head's sha256 is in the run key, so a refit of the same head must be the same file."""
    import subprocess
    import sys

    from safetensors import safe_open
    from safetensors.numpy import load

    code = (
        "import hashlib, numpy as np; from tasks.video.head import fit_gda, save_head;"
        "x = np.array([[1.0, 0.1, 0.0], [0.9, 0.0, 0.1], [0.0, 1.0, 0.1], [0.1, 0.9, 0.0]]);"
        f"h = save_head(fit_gda(x, np.array([0, 0, 1, 1])), 0.5, {IDENTITY!r}, 'prompts');"
        "print(hashlib.sha256(h).hexdigest())"
    )
    run = [sys.executable, "-c", code]
    digests = {subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()}
    digests |= {subprocess.run(run, capture_output=True, text=True).stdout.strip() for _ in "abc"}
    assert digests == {hashlib.sha256(head_bytes(IDENTITY)).hexdigest()}
    # still a safetensors file that safetensors itself reads, with its metadata
    data = head_bytes(IDENTITY)
    assert set(load(data)) == {"w", "b", "mu", "cov"}
    (tmp_path / "h.safetensors").write_bytes(data)
    with safe_open(str(tmp_path / "h.safetensors"), "np") as f:
        assert f.metadata()["kind"] == "gda"
