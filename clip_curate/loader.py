"""A PyTorch IterableDataset over published shards: every sample once per epoch.

Work is split over distributed ranks (`rank`/`world_size`, else the RANK and WORLD_SIZE
environment variables) and DataLoader workers. With at least as many shards as consumers
(ranks x workers) each consumer reads its own shards; with fewer, each reads every shard
and keeps every n-th sample, so small datasets split exactly too. `shuffle=True` shuffles
the shard order (the same on every rank) and a bounded buffer of samples, reproducibly
from (seed, epoch); call `set_epoch` between epochs.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from tasks.io.tars import samples

IMAGE_DECODES = ("pil", "bytes", "numpy")


def iter_tar(url: str, so: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a shard, streamed (nothing extracted)."""
    return samples(url, so)


def _decode_image(data: bytes, mode: str) -> Any:
    if mode == "bytes":
        return data
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    if mode == "numpy":
        import numpy as np

        return np.asarray(image)
    return image


def _decode_clip(data: bytes, fps: float | None) -> Any:
    """uint8 frames T x H x W x 3 of an mp4, every frame or sampled at `fps` (decord)."""
    import decord

    reader = decord.VideoReader(io.BytesIO(data))
    n, rate = len(reader), float(reader.get_avg_fps()) or 1.0
    step = max(1.0, rate / fps) if fps else 1.0
    picks = sorted({min(n - 1, round(i * step)) for i in range(int(n / step + 1e-9) or 1)})
    return reader.get_batch(picks).asnumpy()


class CurateIterable(IterableDataset):
    """Pool samples `{uid, image, caption, json}` or video events `{event_id, clip, json}`."""

    def __init__(
        self,
        flow: str,
        shards: list[tuple[str, int]],
        storage_options: dict[str, Any] | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        decode: str = "pil",
        fps: float | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        buffer_size: int = 1000,
    ) -> None:
        if decode not in IMAGE_DECODES:
            raise ValueError(f"decode must be one of {IMAGE_DECODES}")
        self.flow, self.shards, self.so = flow, list(shards), storage_options
        self.shuffle, self.seed, self.decode, self.fps = shuffle, seed, decode, fps
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        self.buffer_size, self.epoch = buffer_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(n for _, n in self.shards)

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _items(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        me, consumers = self._consumer()
        shards = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(shards)  # same on every rank
        if len(shards) >= consumers:
            for url, _ in shards[me::consumers]:
                yield from iter_tar(url, self.so)
            return
        offset = 0
        for url, n in shards:
            for i, item in enumerate(iter_tar(url, self.so)):
                if (offset + i) % consumers == me:
                    yield item
            offset += n

    def _sample(self, key: str, files: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(files.get("json", b"{}"))
        if self.flow == "video":
            return {"event_id": key, "clip": _decode_clip(files["mp4"], self.fps), "json": meta}
        ext = next(e for e in files if e not in ("json", "txt"))
        return {
            "uid": meta.get("uid", key),
            "image": _decode_image(files[ext], self.decode),
            "caption": files.get("txt", b"").decode(),
            "json": meta,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items = (self._sample(k, f) for k, f in self._items())
        if not self.shuffle:
            yield from items
            return
        me, _ = self._consumer()
        rng, buffer = random.Random(f"{self.seed}:{self.epoch}:{me}"), []
        for item in items:
            buffer.append(item)
            if len(buffer) >= self.buffer_size:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer
