"""Bundled sample data for `curate demo`: a small generated pool and a tiny random-init model.

Nothing is downloaded: images are drawn shapes with captions that describe them (or,
on purpose, another picture), a few samples are broken the ways web data breaks, and
the model is a tiny open_clip architecture with a random-init checkpoint written here.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import tarfile
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 20),
}
SHAPES = ("circle", "square", "triangle")
REPOSTS = 3  # photos of shard 0 that shard 1 posts again: exact dedup has work to do


def _subject(seed: int) -> tuple[str, str]:
    """The colour and shape drawn for picture `seed`."""
    rng = random.Random(seed)
    return rng.choice(list(COLORS)), rng.choice(SHAPES)


def draw(color: str, shape: str, size: int = 96, seed: int = 0) -> bytes:
    """A JPEG of one coloured shape on a white background, a different picture per seed
    (16 faint marks in a corner spell the seed: no two seeds below 65536 share bytes)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for bit in range(16):
        if seed >> bit & 1:
            d.point((bit, 0), fill=(235, 235, 235))
    m, dx, dy = rng.randint(8, 20), rng.randint(-4, 4), rng.randint(-4, 4)
    box = (m + dx, m + dy, size - m + dx, size - m + dy)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        top, bottom = (size // 2 + dx, m + dy), size - m + dy
        d.polygon([top, (m + dx, bottom), (size - m + dx, bottom)], fill=COLORS[color])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[dict]) -> None:
    """Write samples {key, jpg?, txt?, json?} (bytes values) as a WebDataset tar."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext in ("jpg", "txt", "json"):
                if s.get(ext) is not None:
                    _add(tar, f"{s['key']}.{ext}", s[ext])


def pool_samples(n: int, shard: int, mismatch_every: int = 3) -> list[dict]:
    """`n` samples; every `mismatch_every`-th caption describes a different picture."""
    out = []
    for i in range(n):
        # a few photos of the first shard are posted again in the second (exact copies)
        picture = i if shard == 1 and i < REPOSTS else shard * 10_000 + i
        rng = random.Random(picture)
        color, shape = _subject(picture)
        cap_color, cap_shape = color, shape
        if i % mismatch_every == mismatch_every - 1:
            cap_color = rng.choice([c for c in COLORS if c != color])
            cap_shape = rng.choice([s for s in SHAPES if s != shape])
        # 128-bit hex, as DataComp's and img2dataset's uids (`export datacomp-subset` needs it)
        uid = hashlib.md5(f"demo-{shard}-{i}".encode()).hexdigest()
        out.append(
            {
                "key": f"{i:06d}",
                "jpg": draw(*_subject(picture), seed=picture),
                "txt": f"a {cap_color} {cap_shape} on a white background".encode(),
                "json": json.dumps({"uid": uid, "url": f"https://example.com/{uid}.jpg"}).encode(),
            }
        )
    return out


def broken_samples() -> list[dict]:
    """Samples broken the ways web data breaks: each is quarantined or filtered, never fatal."""
    good = draw("red", "circle")
    return [
        {
            "key": "bad_corrupt",
            "jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
            "txt": b"a red circle",
        },
        {"key": "bad_truncated", "jpg": good[: len(good) // 2], "txt": b"a truncated red circle"},
        {"key": "bad_nocaption", "jpg": good},
        {"key": "bad_notutf8", "jpg": good, "txt": b"caf\xe9 \xff\xfe red circle"},
        {"key": "bad_filename", "jpg": good, "txt": b"IMG_2034.JPG"},
        {"key": "bad_short", "jpg": good, "txt": b"circle"},
    ]


def make_pool(root: Path, partition: str, shards: int = 3, per_shard: int = 40) -> Path:
    """Write the demo pool of `partition` under `root/pool/{partition}/`, as a nightly pool
    lands in a folder per day, and return `root/pool`."""
    pool = root / "pool" / partition
    pool.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        samples = pool_samples(per_shard, s)
        if s == 0:
            samples += broken_samples()
        write_shard(pool / f"{s:05d}.tar", samples)
    (pool / f"{shards:05d}.tar").write_bytes(b"")  # an empty shard is counted, not fatal
    return root / "pool"


def make_balance_inputs(root: Path) -> tuple[Path, Path]:
    """A MetaCLIP-style metadata list (the demo's words) and a captions table of the demo
    captions, for `curate balance`; returns (metadata.json, captions.parquet)."""
    import polars as pl

    meta = root / "metadata.json"
    meta.write_text(json.dumps([*COLORS, *SHAPES, "white background"]))
    rows = [s for shard in range(3) for s in pool_samples(40, shard)]
    captions = pl.DataFrame(
        {
            "uid": [json.loads(s["json"])["uid"] for s in rows],
            "caption": [s["txt"].decode() for s in rows],
        }
    )
    out = root / "captions.parquet"
    captions.write_parquet(out)
    return meta, out


def train_on_shapes(
    model: Any, preprocess: Any, tokenizer: Any, steps: int, seed: int = 0
) -> float:
    """A few hundred contrastive steps on drawn shapes, so the demo's scores mean something.

    Real open_clip training (ClipLoss, AdamW) on the demo's own kind of pictures: afterwards
    matching captions score far above mismatching ones. Returns the last loss.
    """
    import open_clip
    import torch

    rng = random.Random(seed)
    classes = [(c, s) for c in COLORS for s in SHAPES]
    pics = {
        k: [preprocess(Image.open(io.BytesIO(draw(*k, seed=i)))) for i in range(8)] for k in classes
    }
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = rng.sample(classes, len(classes))
        x = torch.stack([rng.choice(pics[k]) for k in batch])
        t = tokenizer([f"a {c} {s} on a white background" for c, s in batch])
        img, txt = model.encode_image(x, normalize=True), model.encode_text(t, normalize=True)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss)


def make_tiny_model(root: Path, seed: int = 0, train_steps: int = 0) -> tuple[Path, Path]:
    """Copy the tiny architecture JSON and write a checkpoint (state dict only).

    Random-init by default (tests); `train_steps` > 0 trains it on drawn shapes (the demo).
    """
    import open_clip
    import torch

    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    arch = models / "tiny-clip.json"
    with resources.as_file(resources.files("infra") / "models" / "tiny-clip.json") as src:
        shutil.copyfile(src, arch)
    open_clip.add_model_config(arch)
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch.stem, pretrained=None)
    if train_steps:
        train_on_shapes(model, preprocess, open_clip.get_tokenizer(arch.stem), train_steps, seed)
    ckpt = models / ("tiny-clip-shapes.pt" if train_steps else "tiny-clip-random.pt")
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return arch, ckpt
