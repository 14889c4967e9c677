"""Column contracts of every table the project writes, checked at stage boundaries.

A stage that produces a frame calls `conform(df, SCHEMA)`: missing columns are an error
(a bug, not bad input), columns are cast to the contract's types and put in its order, so
downstream readers and other tools can rely on the parquet schema.
"""

from __future__ import annotations

import polars as pl

# Image member extensions a pool sample may carry, in the sources we read and in the shards
# we publish (the decoder maps every format it accepts onto one of these).
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif"})

STATUSES = (
    "kept",
    "filtered_text",
    "filtered_image",
    "filtered_clip",
    "filtered_head",
    "filtered_balance",
    "duplicate",
    "quarantined",
)

# One row per input sample of one input shard, written by the score stage (cached).
SCORES = {
    "uid": pl.String,
    "source": pl.String,  # input shard URL
    "key": pl.String,  # the sample's key in its source shard
    "index": pl.Int64,  # position of the sample in its source shard (input order)
    "caption": pl.String,
    "url": pl.String,
    "image_ext": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "clip_score": pl.Float32,
    "emb_row": pl.Int64,  # row in the shard's fp16 embedding file, null when not embedded
    "error": pl.String,  # quarantine code found while reading/decoding, else null
    "error_detail": pl.String,  # what exactly went wrong, for a person (never parsed)
    "source_meta": pl.String,  # the sample's source json (img2dataset fields), as JSON
    **{
        "sha256": pl.String,  # hex sha256 of the image bytes as stored (exact-duplicate key)
        "phash": pl.UInt64,  # 64-bit DCT pHash of the decoded image (imagehash.phash's bits)
        "lang": pl.String,  # fastText lid.176 top-1 language of the caption, null if no letters
        "lang_score": pl.Float32,
        "n_tokens": pl.Int32,  # caption tokens incl. start/end (the model's tokenizer)
        "truncated": pl.Boolean,  # more tokens than the model's context: CLIP saw a prefix
    },
}

# What the score stage derives from each sample besides the CLIP score (kept with it).
FINGERPRINTS = ("sha256", "phash")
CAPTION_FACTS = ("lang", "lang_score", "n_tokens", "truncated")

# Per input shard, written when balancing: MetaCLIP matches of each caption (cached apart from
# the scores so that changing the metadata never re-runs CLIP).
MATCHES = {
    "uid": pl.String,
    "index": pl.Int64,
    "entry_ids": pl.List(pl.UInt32),
}
# Worldwide balancing (a folder of per-language lists): ids are positions in the list of the
# caption's metadata language `meta_lang` (null: no list for it, so no ids). samples.parquet
# of a worldwide partition carries `meta_lang` too, after the contract's columns.
MATCHES_WORLDWIDE = {**MATCHES, "meta_lang": pl.String}

# One row per INPUT sample of the partition, with the decision (published samples.parquet).
SAMPLES = {
    "uid": pl.String,
    "source": pl.String,
    "key": pl.String,
    "index": pl.Int64,
    "caption": pl.String,
    "url": pl.String,
    "image_ext": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "clip_score": pl.Float32,
    "sha256": pl.String,
    "phash": pl.UInt64,
    "lang": pl.String,
    "lang_score": pl.Float32,
    "n_tokens": pl.Int32,
    "truncated": pl.Boolean,
    "duplicate_of": pl.String,  # for `duplicate`: the uid of the group's survivor
    "entry_ids": pl.List(pl.UInt32),
    "keep_prob": pl.Float64,
    "status": pl.Enum(list(STATUSES)),
    "error": pl.String,  # the reason code (e.g. `text:too_few_words`), for every status but kept
    "error_detail": pl.String,  # the reason in words, with the numbers (never parsed)
    "shard": pl.String,  # output shard file name for kept samples, else null
    "out_key": pl.String,  # member key in the output shard, derived from uid
}

# Per output shard index (shards/NNNNNN.parquet).
SHARD_INDEX = {
    "out_key": pl.String,
    "uid": pl.String,
    "source": pl.String,
    "key": pl.String,
    "caption": pl.String,
    "clip_score": pl.Float32,
    "image_ext": pl.String,
}

# Files of a published pool version that later partitions read, by the kind of history they
# are (dataset-scope dedup, MetaCLIP running counts). A partition's digest of them is what the
# catalog calls its offer: a later night depends on the offers of every earlier partition.
DEDUP_INDEX_FILE = "dedup/index.parquet"  # uid, sha256, phash of the kept samples
DEDUP_EMB_FILE = "dedup/emb.npy"  # their fp16 image embeddings, same order (semantic dedup)
ENTRY_COUNTS_FILE = "entry_counts.parquet"  # this partition's own MetaCLIP entry counts
RUNNING_COUNTS_FILE = "running_counts.parquet"  # its counts plus every earlier partition's
HISTORY_FILES = {
    "dedup": (DEDUP_INDEX_FILE, DEDUP_EMB_FILE),
    "counts": (ENTRY_COUNTS_FILE,),
}
# ... and every file a later night may open (the catalog lists which ones a version has)
LATER_READ_FILES = (DEDUP_INDEX_FILE, DEDUP_EMB_FILE, ENTRY_COUNTS_FILE, RUNNING_COUNTS_FILE)

# Video flow tables.
VIDEO_STATUSES = ("ok", "recovered", "quarantined", "duplicate")
# videos whose frames were scored (a recovered one from its recovered copy)
SCORED_VIDEO = ("ok", "recovered")
VIDEOS = {
    "video": pl.String,  # input URL
    "fingerprint": pl.String,
    # recovered: a cut file read from its readable prefix or rebuilt with `reference`
    "status": pl.Enum(list(VIDEO_STATUSES)),
    "error": pl.String,  # quarantine code, duplicate:exact, or truncated (for recovered)
    "error_detail": pl.String,
    "duration_s": pl.Float64,
    "fps": pl.Float64,
    "width": pl.Int32,
    "height": pl.Int32,
    "codec": pl.String,
    "n_frames": pl.Int64,
    "rotation": pl.Int32,  # counter-clockwise degrees a player turns the coded pictures by
    "display_width": pl.Int32,  # the picture as displayed (rotation and pixel aspect applied)
    "display_height": pl.Int32,
    "decoder": pl.String,  # decord | decord_remux | pyav: the exact path that read it
    "reference": pl.String,  # recovered from its media data: the healthy recording used
    "vehicle_id": pl.String,
    "start_time": pl.String,
    "sampled_frames": pl.Int64,
    "events": pl.Int64,
    "duplicate_of": pl.String,  # for `duplicate`: the input with the same bytes that was used
}

FRAMES = {
    "video": pl.String,
    "frame_index": pl.Int64,  # the picture's place in the video's display order
    "t_s": pl.Float64,  # its presentation time, seconds after the video's first frame
    "p_near_miss": pl.Float32,  # zero-shot probability
    "p_head": pl.Float32,  # the head's probability (`video.head`), null without a head
    "motion": pl.Float32,  # robust z-score of embedding change (0 on OOD frames)
    "score": pl.Float32,  # fused score
    "smoothed": pl.Float32,  # after median + EMA, within stretches of non-OOD frames; NaN on OOD
    "ood": pl.Float32,  # out-of-distribution score in [0, 1] (tasks/video/ood.py)
    "ood_flag": pl.Boolean,  # ood > video.ood.threshold: left out of event detection
    "ood_cue": pl.String,  # the cue that flagged it (black, frozen, uncertain, ...), else null
    "emb_row": pl.Int64,
    # from the video's telemetry (tasks/video/telemetry), null without telemetry at t_s:
    "speed": pl.Float32,  # m/s
    "accel_long": pl.Float32,  # m/s^2, forward
    "accel_lat": pl.Float32,  # m/s^2
    "telemetry": pl.Float32,  # hard-braking / swerve cue: robust z, the largest over the frame
}

EVENTS = {
    "event_id": pl.String,
    "video": pl.String,
    "start_s": pl.Float64,
    "end_s": pl.Float64,
    "peak_s": pl.Float64,
    "peak_score": pl.Float64,
    "clip_start_s": pl.Float64,
    "clip_end_s": pl.Float64,
    "key": pl.String,
    "shard": pl.String,  # null when the clip could not be cut
    "status": pl.Enum(["ok", "clip_error"]),
    "error": pl.String,
    "error_detail": pl.String,
}


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType], extra: bool = False) -> pl.DataFrame:
    """Cast `df` to `schema` (order and types); raise on missing columns.

    With `extra=True`, columns beyond the contract are kept after the contract's ones.
    """
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"table is missing columns {missing}")
    cols = [pl.col(c).cast(t) for c, t in schema.items()]
    if extra:
        cols += [pl.col(c) for c in df.columns if c not in schema]
    return df.select(cols)
