"""img2dataset's own output as input: its WebDataset and parquet formats, curated.

img2dataset runs for real, in a throwaway virtualenv (its dependency pins are its own),
against a `python -m http.server` on 127.0.0.1 serving generated JPEGs, a missing file
(404) and a file that is not an image. Slow: it installs img2dataset.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from flows.pool import run_pool
from schemas.config import parse_config
from tasks.verify import verify_partition
from tests.helpers import published_dir
from tests.pool_factory import make_image

pytestmark = pytest.mark.slow
N_IMAGES = 6


@pytest.fixture(scope="module")
def img2dataset(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("i2d") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "img2dataset"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if pip.returncode != 0:
        pytest.skip(f"cannot install img2dataset: {pip.stderr.strip()[-500:]}")
    return venv / "bin" / "img2dataset"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("www")
    for i in range(N_IMAGES):
        (root / f"img{i}.jpg").write_bytes(make_image("jpg", size=(96, 80), seed=i))
    (root / "text.jpg").write_text("this is not an image")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rows = [
        {"url": f"{base}/img{i}.jpg", "caption": f"a generated photo {i}"} for i in range(N_IMAGES)
    ]
    rows += [{"url": f"{base}/missing.jpg", "caption": "gone"}]
    rows += [{"url": f"{base}/text.jpg", "caption": "not an image"}]
    urls = root / "urls.parquet"
    pl.DataFrame(rows).write_parquet(urls)
    yield base, urls
    server.shutdown()


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_curate_img2dataset_output(fmt, img2dataset, served, tmp_path, tiny_model, prefect_harness):
    _, urls = served
    out = tmp_path / "i2d"
    proc = subprocess.run(
        [str(img2dataset), "--url_list", str(urls), "--input_format", "parquet",
         "--url_col", "url", "--caption_col", "caption", "--output_format", fmt,
         "--output_folder", str(out), "--processes_count", "1", "--thread_count", "4",
         "--image_size", "64", "--resize_mode", "no", "--enable_wandb", "False",
         "--retries", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(out.glob("*_stats.json"))
    pool = {"input": str(out / "*"), "text_filter": {"enabled": False}}
    if fmt == "parquet":
        pool["image_column"] = "jpg"
    cfg = {
        "dataset": "i2d",
        "output": str(tmp_path / "curated"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu"},
        "pool": pool,
    }
    result = run_pool(parse_config(cfg), "2026-10-01")
    assert verify_partition(result["uri"]) == []
    part = published_dir(result["uri"])
    samples = pl.read_parquet(part / "samples.parquet")
    assert samples.height == N_IMAGES + 2  # every URL tried is an input row
    failed = samples.filter(pl.col("error") == "download_failed")
    assert failed.height == 2 and failed["error_detail"].str.contains("failed_to").all()
    kept = samples.filter(pl.col("status") == "kept")
    assert kept.height >= 1 and kept["original_width"].to_list() == [96] * kept.height
    stats = json.loads((part / "stats.json").read_text())
    assert stats["shards"]["unreadable"] == 0
