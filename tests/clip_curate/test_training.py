"""Published shards train open_clip: open_clip_train's own WebDataset loader, a few steps.

open_clip_train 3.3's loader breaks on webdataset >= 0.2.96 (webdataset#384,
open_clip#935), so training environments pin `webdataset<=0.2.86`. This test installs that
release into a side folder for one subprocess (the project itself keeps its own version)
and runs `open_clip_train.data.get_wds_dataset` on a published partition, with the sample
count read from the partition's `shards/sizes.json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import clip_curate as cc
from tests.helpers import ROOT

TRAIN = r"""
import json, sys
from argparse import Namespace
import torch, open_clip, webdataset
from open_clip_train.data import get_wds_dataset

arch, shards, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
open_clip.add_model_config(arch)
name = arch.rsplit("/", 1)[-1].removesuffix(".json")
model, preprocess, _ = open_clip.create_model_and_transforms(name, pretrained=None)
tokenizer = open_clip.get_tokenizer(name)
args = Namespace(
    train_data=shards, train_num_samples=None, dataset_resampled=False,
    train_data_upsampling_factors=None, seed=0, batch_size=2, workers=1, world_size=1,
)
data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
loss_fn = open_clip.ClipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
losses, seen = [], 0
for i, (images, texts) in enumerate(data.dataloader):
    if i == steps:
        break
    img, txt, scale = model(images, texts)[:3]
    loss = loss_fn(img, txt, scale)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss))
    seen += len(images)
print(json.dumps({"webdataset": webdataset.__version__, "num_samples": data.dataloader.num_samples,
                  "losses": losses, "seen": seen}))
"""


def test_open_clip_trains_on_a_published_partition(published: Path, tiny_model, tmp_path):
    side = tmp_path / "wds086"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(side),
         "webdataset==0.2.86"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if pip.returncode != 0:
        pytest.skip(f"cannot install webdataset==0.2.86: {pip.stderr.strip()[-300:]}")
    part = cc.open_dataset(str(published)).partitions("pool")[-1]
    names = sorted(Path(u).name.removesuffix(".tar") for u in part.shard_urls())
    shards = f"{Path(part.url('shards'))}/{{{names[0]}..{names[-1]}}}.tar"
    (tmp_path / "train.py").write_text(TRAIN)
    env = {"PYTHONPATH": f"{side}:{ROOT}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "train.py"), tiny_model["name"], shards, "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["webdataset"] == "0.2.86"
    assert out["num_samples"] >= part.stats["counts"]["kept"]  # from sizes.json, rounded up
    assert len(out["losses"]) == 3 and all(x == x and x > 0 for x in out["losses"])
    assert out["seen"] == 6
