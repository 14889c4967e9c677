"""Both flows against moto's S3 server on 127.0.0.1: inputs, cache and output all on s3://.

Credentials come from the environment (the `s3` fixture puts fake ones there); the configs
carry only the endpoint, as a real config would. A flaky proxy in front of moto proves that
transient S3 errors (HTTP 500) are retried, and a canary secret proves that credentials put
in `storage_options` anyway never reach published files or logs.
"""

from __future__ import annotations

import http.client
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from flows.pool import run_pool
from infra.s3 import LocalS3
from schemas.config import ConfigError, parse_config
from tasks.io import storage
from tasks.publish.manifest import read_manifest, read_published
from tasks.verify import verify_partition
from tests.helpers import published_dir
from tests.pool_factory import broken_pool, make_samples, write_tar

pytestmark = pytest.mark.s3
pytest_plugins = ["tests.s3_fixture"]  # the `s3` and `bucket` fixtures
PARTITION = "2026-03-04"
KEY_CANARY, SECRET_CANARY = "AKIACANARY0000000001", "canary-secret-7f3a9c2e"


def pool_config(tiny_model: dict, inputs: str, output: str, so: dict, **pool) -> dict:
    return {
        "dataset": "web",
        "output": output,
        "storage_options": so,
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {"input": inputs, "shard": {"max_samples": 8}, **pool},
    }


def make_pool(folder: Path) -> Path:
    folder.mkdir(parents=True)
    write_tar(folder / "00000.tar", make_samples(10, seed=1))
    write_tar(folder / "00001.tar", make_samples(7, seed=2))
    broken_pool(folder / "00002.tar")
    return folder


def scored(samples: pl.DataFrame) -> pl.DataFrame:
    """What must not depend on where the files live: per uid, score, status and reason."""
    return samples.select("uid", "clip_score", "status", "error").sort("uid")


def test_config_refuses_credentials(s3):
    so = {**s3.storage_options, "key": KEY_CANARY, "secret": SECRET_CANARY}
    with pytest.raises(ConfigError, match="looks like a credential") as err:
        parse_config({"storage_options": so})
    assert SECRET_CANARY not in str(err.value) and KEY_CANARY not in str(err.value)


def test_pool_flow_on_s3_matches_local_run_and_leaks_no_secret(
    tmp_path, tiny_model, s3, bucket, prefect_harness, caplog, monkeypatch
):
    pool = make_pool(tmp_path / "in" / PARTITION)
    s3.upload(str(pool), f"{bucket}/pools/{PARTITION}")
    # credentials come only from the environment (a secret in storage_options is refused,
    # see test_config_refuses_credentials); the canaries must not leak from there either
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_CANARY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_CANARY)
    so = dict(s3.storage_options)
    cfg = parse_config(
        pool_config(
            tiny_model,
            f"{bucket}/pools/{{date}}/*.tar",
            f"{bucket}/curated",
            so,
            clip_filter={"top_fraction": 0.5},
        )
    )
    caplog.set_level("INFO")
    result = run_pool(cfg, PARTITION)
    uri = f"{bucket}/curated/web/pool/{PARTITION}"
    assert result == {**result, "status": "published", "uri": uri}
    assert verify_partition(uri, so) == []
    assert read_manifest(uri, so)["inputs"][0]["url"] == f"{bucket}/pools/{PARTITION}/00000.tar"
    fs = s3.fs()
    cache = fs.find(f"{bucket}/curated/web/_cache/pool-scores")
    assert len([p for p in cache if p.endswith("/done.json")]) == 3  # the cache is on S3 too

    # the same shards read from local disk give the same scores and decisions
    local = parse_config(
        pool_config(
            tiny_model,
            str(tmp_path / "in" / "{date}" / "*.tar"),
            str(tmp_path / "out"),
            {},
            clip_filter={"top_fraction": 0.5},
        )
    )
    run_pool(local, PARTITION)
    s3_samples = storage.read_parquet(read_published(uri, so).url("samples.parquet"), so)
    local_samples = pl.read_parquet(
        published_dir(tmp_path / "out" / "web" / "pool" / PARTITION) / "samples.parquet"
    )
    assert scored(s3_samples).equals(scored(local_samples))

    # the canary credentials appear in no object of the bucket and in no log line
    for path in fs.find(bucket):
        data = fs.cat_file(path)
        assert KEY_CANARY.encode() not in data and SECRET_CANARY.encode() not in data, path
    assert KEY_CANARY not in caplog.text and SECRET_CANARY not in caplog.text
    for line in prefect_log_lines():
        assert KEY_CANARY not in line and SECRET_CANARY not in line

    # `curate verify s3://...` with the endpoint from the environment, not from a config
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    assert main(["verify", uri]) == 0

    again = run_pool(cfg, PARTITION)
    assert again["status"] == "skipped"


def prefect_log_lines() -> list[str]:
    """Every log line the Prefect API stored in this session."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(limit=200)]


def test_video_flow_on_s3(tmp_path, tiny_model, s3, bucket, prefect_harness):
    pytest.importorskip("av")
    from tests.video_factory import make_not_video, make_video

    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "cam_a.mp4", duration_s=3.0, fps=10, size=(64, 48))
    make_not_video(folder / "bad.mp4")
    s3.upload(str(folder), f"{bucket}/fleet/raw/{PARTITION}")
    cfg = parse_config(
        {
            "dataset": "fleet",
            "output": f"{bucket}/curated",
            "storage_options": s3.storage_options,
            "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 16},
            "video": {
                "input": f"{bucket}/fleet/raw/{{date}}/*.mp4",
                "sample_fps": 4,
                "chunk_frames": 8,
                "events": {"start": 0.0, "stop": 0.0, "clip_before_s": 0.5, "clip_after_s": 0.5},
            },
        }
    )
    from flows.video import run_video

    result = run_video(cfg, PARTITION)
    uri = f"{bucket}/curated/fleet/video/{PARTITION}"
    assert result["status"] == "published" and result["events"] >= 1
    assert verify_partition(uri, s3.storage_options) == []
    published = read_published(uri, s3.storage_options)
    videos = storage.read_parquet(published.url("videos.parquet"), s3.storage_options)
    assert sorted(videos["status"].cast(pl.String)) == ["ok", "quarantined"]
    events = storage.read_parquet(published.url("events.parquet"), s3.storage_options)
    shard = events["shard"][0]
    data = storage.read_bytes(published.url(f"shards/{shard}"), s3.storage_options)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert f"{events['key'][0]}.mp4" in names


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to moto, answering every `every`-th request with HTTP 500 InternalError."""

    protocol_version = "HTTP/1.1"
    ERROR = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
        b"<Message>We encountered an internal error. Please try again.</Message></Error>"
    )

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = self.server
        with server.guard:
            server.requests += 1
            fail = server.requests % server.every == 0
            server.failed += fail
        if fail:
            self._reply(500, [("Content-Type", "application/xml")], self.ERROR)
            return
        conn = http.client.HTTPConnection(*server.target, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        self._reply(resp.status, resp.getheaders(), resp.read())
        conn.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        skip = {"transfer-encoding", "connection", "content-length", "date", "server"}
        for k, v in headers:
            if k.lower() not in skip or (k.lower() == "content-length" and self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@pytest.fixture
def flaky(s3: LocalS3) -> Iterator[ThreadingHTTPServer]:
    host, port = s3.endpoint.removeprefix("http://").split(":")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    server.target, server.every, server.requests, server.failed = (host, int(port)), 10, 0, 0
    server.guard = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()


def test_transient_s3_errors_are_retried(tmp_path, tiny_model, s3, bucket, flaky, prefect_harness):
    so = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{flaky.server_address[1]}"}}
    # the injected errors are real: without retries a single request fails
    flaky.every, flaky.requests = 1, 0
    no_retry = {**so, "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(OSError):
        storage.write_bytes(f"{bucket}/probe.bin", b"x", no_retry)

    flaky.every, flaky.requests, flaky.failed = 10, 0, 0
    pool = make_pool(tmp_path / "in" / PARTITION)
    s3.upload(str(pool), f"{bucket}/pools/{PARTITION}")
    cfg = parse_config(
        pool_config(tiny_model, f"{bucket}/pools/{{date}}/*.tar", f"{bucket}/curated", so)
    )
    result = run_pool(cfg, PARTITION)
    assert result["status"] == "published"
    assert flaky.failed >= 4  # every 10th request failed, and the run still published
    assert verify_partition(result["uri"], s3.storage_options) == []
    stats_url = read_published(result["uri"], s3.storage_options).url("stats.json")
    stats = json.loads(s3.fs().cat_file(stats_url))
    assert stats["shards"]["input"] == 3
