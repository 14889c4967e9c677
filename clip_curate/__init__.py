"""clip-curate for consumers: open a curated dataset, read its tables, shards and samples.

    import clip_curate as cc
    ds = cc.open_dataset("s3://bucket/prefix/my-dataset")
    ds.partitions("pool", start="2026-11-01", end="2026-11-30")
    ds.samples("pool", status="kept").collect()
    ds.shard_urls("pool")
    ds.torch_dataset("pool", shuffle=True, seed=0)

Light to import: neither Prefect nor torch nor open_clip is imported here.
"""

from clip_curate.dataset import Dataset, Partition, open_dataset

__all__ = ["Dataset", "Partition", "open_dataset"]
