"""Shared fixtures: an isolated Prefect home, a tiny random-init CLIP model, generated pools."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="curate-tests-")
os.environ["PREFECT_HOME"] = os.path.join(_HOME, "prefect")
os.environ["CURATE_CACHE_DIR"] = os.path.join(_HOME, "cache")
os.environ.setdefault("PREFECT_API_URL", "")
os.environ.pop("PREFECT_API_URL")
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny open_clip architecture JSON and a random-init checkpoint written by the test."""
    from infra.demo_data import make_tiny_model

    arch, ckpt = make_tiny_model(tmp_path_factory.mktemp("model"))
    return {"name": str(arch), "pretrained": str(ckpt)}


@pytest.fixture(scope="session")
def model_cfg(tiny_model: dict[str, str]):
    from schemas.config import ModelConfig

    return ModelConfig(
        name=tiny_model["name"],
        pretrained=tiny_model["pretrained"],
        precision="fp32",
        device="cpu",
        batch_size=8,
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (real server in a subprocess, throwaway database)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo(tmp_path_factory, prefect_harness):
    """`curate demo`'s folder (pool published, videos, labels, metadata), made once: the
    README's quick start and synopsis run against it, and so do the CLI's error checks."""
    from flows.demo import run_demo

    root = tmp_path_factory.mktemp("demo")
    assert run_demo(str(root), train_steps=30) == 0
    return root
