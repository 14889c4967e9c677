"""Shared S3 fixtures: one moto server per test session on 127.0.0.1, a fresh bucket per test.

Use in a test module: `pytest_plugins = ["tests.s3_fixture"]`, then ask for `s3` and/or `bucket`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra.s3 import LocalS3, moto_s3


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    """moto's S3 server; fake credentials in the environment (never in storage_options)."""
    pytest.importorskip("moto.server")
    with moto_s3() as server:
        yield server


@pytest.fixture
def bucket(s3: LocalS3) -> str:
    """A new empty bucket for this test: `s3://test-<random>`."""
    return s3.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
