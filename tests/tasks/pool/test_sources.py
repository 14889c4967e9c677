"""Reading pools: round trips against the writer and the webdataset library, every kind of
broken input, parquet layouts, selection, uids and bounded memory."""

from __future__ import annotations

import hashlib
import io
import itertools
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from tasks.pool.sources import (
    RawSample,
    ShardReadError,
    iter_samples,
    iter_selected,
    sample_uid,
    sample_url,
    sniff_image_ext,
)
from tasks.pool.tar import split_member_name
from tests.helpers import shared_path
from tests.pool_factory import (
    CAPTIONS,
    PoolSample,
    bomb_png,
    broken_pool,
    corrupt_image,
    make_image,
    make_samples,
    member_offsets,
    truncate_file,
    truncated_image,
    write_empty,
    write_empty_tar,
    write_members,
    write_parquet_pool,
    write_tar,
)


def mixed_samples() -> list[PoolSample]:
    """jpg, png and webp samples, one without a json sidecar."""
    samples = (
        make_samples(4) + make_samples(3, fmt="png", start=4) + make_samples(2, fmt="webp", start=7)
    )
    samples[5].meta = None
    return samples


def _summary(samples: list[RawSample]) -> list[tuple]:
    return [(s.key, s.image, s.image_ext, s.caption, s.meta, s.error) for s in samples]


def _expected(samples: list[PoolSample]) -> list[tuple]:
    return [(s.key, s.image, s.ext, s.caption, s.meta or {}, None) for s in samples]


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [False, True])
def test_tar_round_trip(tmp_path: Path, gzip: bool) -> None:
    samples = mixed_samples()
    path = write_tar(tmp_path / ("pool.tar.gz" if gzip else "pool.tar"), samples, gzip=gzip)
    read = list(iter_samples(str(path)))
    assert _summary(read) == _expected(samples)
    assert [s.index for s in read] == list(range(len(samples)))


def test_same_keys_and_bytes_as_webdataset_library(tmp_path: Path) -> None:
    samples = make_samples(5, prefix="part-1/") + make_samples(2, prefix="x.y/", start=5)
    members = [(f"{s.key}.{s.ext}", s.image) for s in samples[:3]]
    members.append(("README", b"no extension: skipped by both readers"))
    members.append(("__index__/x.jpg", b"webdataset skips '__*__/' members"))
    for s in samples[3:]:
        members += [(f"{s.key}.{s.ext}", s.image), (f"{s.key}.seg.PNG", b"mask")]
    path = write_members(tmp_path / "pool.tar", members)

    ours = list(iter_samples(str(path)))
    ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    theirs = list(ds)
    assert [s.key for s in ours] == [t["__key__"] for t in theirs]
    for s, t in zip(ours, theirs, strict=True):
        assert s.image == t["jpg"] and s.error == "missing_caption"
    assert [s.key for s in ours][3:5] == ["part-1/000000003", "part-1/000000004"]
    assert ours[-1].key == "x.y/000000006"  # a dot in the directory is not the extension


def test_split_member_name_follows_webdataset() -> None:
    assert split_member_name("a/b.c/d.E.JPG") == ("a/b.c/d", "e.jpg", False)
    assert split_member_name("noext") == (None, "", False)
    assert split_member_name("../up.jpg") == ("../up", "jpg", True)
    assert split_member_name("/abs/x.txt") == ("/abs/x", "txt", True)
    assert split_member_name("a/../b.txt")[2] is True
    assert split_member_name("a..b.txt")[2] is False  # '..' inside a name is not a component


def test_reads_through_fsspec_urls(tmp_path: Path) -> None:
    samples = make_samples(3)
    path = write_tar(tmp_path / "pool.tar", samples)
    fs = fsspec.filesystem("memory")
    fs.pipe("/pools/day/shard.tar", path.read_bytes())
    try:
        read = list(iter_samples("memory://pools/day/shard.tar"))
    finally:
        fs.rm("/pools", recursive=True)
    assert _summary(read) == _expected(samples)


# --- broken inputs -------------------------------------------------------------------------


def test_every_broken_sample_is_reported_and_counted(tmp_path: Path) -> None:
    path, expected = broken_pool(tmp_path / "shard" / "broken.tar")
    read = list(iter_samples(str(path)))
    assert [(s.key, s.error) for s in read] == expected
    assert [s.index for s in read] == list(range(len(expected)))
    by_key = {s.key: s for s in read}
    assert by_key["bomb"].image == bomb_png() and by_key["bomb"].image_ext == "png"
    assert by_key["latin1"].caption is None and by_key["no_caption"].caption is None
    assert by_key["badjson"].meta == {} and by_key["badjson"].caption == "A fine caption"
    assert by_key["../escape"].image is None and by_key["../escape"].caption is None
    # nothing was extracted anywhere
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["broken.tar", "shard"]


def test_factory_broken_images_are_what_they_claim() -> None:
    """The decoder's tests rely on these: check them against PIL itself."""
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb_png()))
    assert len(bomb_png()) < 100_000
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(corrupt_image()))
    cut = Image.open(io.BytesIO(truncated_image()))
    assert cut.size == (64, 48)
    with pytest.raises(OSError, match="truncated"):
        cut.load()


def test_bad_json_forms(tmp_path: Path) -> None:
    img = make_image()
    cases = {
        "list": b"[1, 2]",
        "deep": b"[" * 100_000,
        "latin": b'{"a": "\xe9"}',
        "ok": b'{"uid": 7}',
    }
    members = []
    for key, meta in cases.items():
        members += [(f"{key}.jpg", img), (f"{key}.txt", b"A cat"), (f"{key}.json", meta)]
    read = list(iter_samples(str(write_members(tmp_path / "j.tar", members))))
    assert [s.error for s in read] == ["bad_json", "bad_json", "bad_json", None]
    assert sample_uid(read[3]) == "7"


def test_caption_is_kept_as_written_but_for_the_bom(tmp_path: Path) -> None:
    """Defect: the reader stripped captions, so DataComp's length rule (raw characters) and
    the published `.txt` saw other text than the input's. A BOM is an encoding mark: dropped.
    Surrounding whitespace does not change the content-hash uid (uids stay as published)."""
    img = make_image()
    members = [
        ("a.jpg", img),
        ("a.txt", "\ufeff  Ein Hund \n".encode()),
        ("b.jpg", img),
        ("b.txt", b""),
        ("c.jpg", img),
        ("c.txt", b"Ein Hund"),
    ]
    read = list(iter_samples(str(write_members(tmp_path / "c.tar", members))))
    got = [(s.caption, s.error) for s in read]
    assert got == [("  Ein Hund \n", None), ("", None), ("Ein Hund", None)]
    assert sample_uid(read[0]) == sample_uid(read[2]) != sample_uid(read[1])


def _cut_results(path: Path, cut: int, tmp_path: Path) -> list[tuple[str, str | None]]:
    copy = truncate_file(shutil.copy(path, tmp_path / f"cut{cut}.tar"), cut)
    return [(s.key, s.error) for s in iter_samples(str(copy))]


def test_truncated_tar_hand_worked_cuts(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "pool.tar", make_samples(3))
    off = member_offsets(path)
    k0, k1, k2 = (f"{i:09d}" for i in range(3))
    # in the middle of sample 1's image data: sample 0 is complete, 1 is not
    assert _cut_results(path, off[f"{k1}.jpg"][1] + 100, tmp_path) == [
        (k0, None),
        (k1, "truncated_tar"),
    ]
    # inside the header of sample 2's caption: tarfile itself would stop silently here
    assert _cut_results(path, off[f"{k2}.txt"][0] + 100, tmp_path) == [
        (k0, None),
        (k1, None),
        (k2, "truncated_tar"),
    ]
    # exactly at a header boundary: sample 1 might have had more members
    assert _cut_results(path, off[f"{k2}.jpg"][0], tmp_path) == [(k0, None), (k1, "truncated_tar")]


def test_truncated_tar_at_any_offset_never_raises_and_keeps_a_prefix(tmp_path: Path) -> None:
    samples = make_samples(4)
    path = write_tar(tmp_path / "pool.tar", samples)
    complete = [(s.key, None) for s in samples]
    end = max(h for h, _ in member_offsets(path).values()) + 1024
    for cut in range(512, end, 333):
        got = _cut_results(path, cut, tmp_path)
        assert got[:-1] == complete[: len(got) - 1]
        assert got[-1] == (samples[len(got) - 1].key, "truncated_tar")


def test_truncated_gzip_tar(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "pool.tar.gz", make_samples(6), gzip=True)
    cut = truncate_file(shutil.copy(path, tmp_path / "cut.tar.gz"), path.stat().st_size // 2)
    got = list(iter_samples(str(cut)))
    assert 1 <= len(got) < 6
    assert [s.error for s in got] == [None] * (len(got) - 1) + ["truncated_tar"]


def test_empty_tars_yield_nothing(tmp_path: Path) -> None:
    assert list(iter_samples(str(write_empty(tmp_path / "zero.tar")))) == []
    assert list(iter_samples(str(write_empty_tar(tmp_path / "none.tar")))) == []


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.tar", None, "not found"),
        ("junk.tar", b"this is not a tar archive at all, just text" * 20, "not a readable tar"),
        ("junk.parquet", b"PAR1 but not really", "not a readable parquet"),
        ("shard.zip", b"", "unknown format"),
    ],
)
def test_unreadable_shards_raise_one_clear_error(
    tmp_path: Path, name: str, content: bytes | None, reason: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ShardReadError, match=reason) as err:
        list(iter_samples(str(path)))
    assert err.value.url == str(path) and "\n" not in str(err.value)


def test_member_too_large_and_links_and_dirs(tmp_path: Path) -> None:
    img = make_image()
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("d"), None)
        tar.getmembers()[-1].type = tarfile.DIRTYPE
        for name, data in (("big.jpg", b"x" * 5000), ("big.txt", b"A cat"), ("ok.jpg", img)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("ok.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    read = list(iter_samples(str(path), max_member_bytes=4096))
    assert [(s.key, s.error) for s in read] == [
        ("big", "member_too_large"),
        ("ok", "missing_caption"),
    ]


def test_duplicate_uids_and_keys_reused_across_shards(tmp_path: Path) -> None:
    a = make_samples(3, seed=1)
    b = make_samples(3, seed=2)  # same keys, different content and uids
    b[2].meta = dict(a[0].meta)  # a duplicate uid across shards
    read_a = list(iter_samples(str(write_tar(tmp_path / "a.tar", a))))
    read_b = list(iter_samples(str(write_tar(tmp_path / "b.tar", b))))
    assert [s.key for s in read_a] == [s.key for s in read_b]
    uids_a = [sample_uid(s) for s in read_a]
    uids_b = [sample_uid(s) for s in read_b]
    assert uids_b[2] == uids_a[0]
    assert len(set(uids_a) | set(uids_b)) == 5


# --- uids, urls, sniffing ------------------------------------------------------------------


def _framed_hash(image: bytes | None, caption: str | None) -> str:
    """The documented framing, written out independently."""
    out = b""
    for part in (image, None if caption is None else caption.encode()):
        out += b"\x00" if part is None else b"\x01" + len(part).to_bytes(8, "big") + part
    return hashlib.sha256(out).hexdigest()[:32]


def test_sample_uid() -> None:
    def s(image: bytes | None, caption: str | None, meta: dict | None = None) -> RawSample:
        return RawSample("k", 0, image, "jpg", caption, meta or {})

    assert sample_uid(s(b"x", "c", {"uid": "abc"})) == "abc"
    assert sample_uid(s(b"x", "c", {"uid": 12})) == "12"
    assert sample_uid(s(b"x", "c", {"uid": ""})) == _framed_hash(b"x", "c")
    assert sample_uid(s(b"x", "c", {"id": "z"}), uid_column="id") == "z"
    assert sample_uid(s(b"x", "c", {"uid": "abc"}), uid_column=None) == _framed_hash(b"x", "c")
    assert sample_uid(s(b"ab", "c")) != sample_uid(s(b"a", "bc"))
    assert sample_uid(s(b"a", None)) != sample_uid(s(b"a", ""))
    assert sample_uid(s("é".encode(), "日本")) == _framed_hash("é".encode(), "日本")
    # a golden value: the uid must never change between machines or releases
    assert (
        sample_uid(s(b"\x89PNG", "A dog runs on the beach.")) == "dc4dea69c3bd0b8a7859ae359a07131c"
    )
    assert sample_url(s(b"", "", {"URL": "http://a"})) == "http://a"


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "gif"])
def test_sniff_image_ext_real_encodings(fmt: str) -> None:
    assert sniff_image_ext(make_image(fmt)) == fmt


def test_sniff_image_ext_other() -> None:
    for pil_fmt, ext in (("BMP", "bmp"), ("TIFF", "tiff")):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format=pil_fmt)
        assert sniff_image_ext(buf.getvalue()) == ext
    assert sniff_image_ext(b"") is None
    assert sniff_image_ext(None) is None
    assert sniff_image_ext(b"<html>not an image</html>") is None


# --- parquet -------------------------------------------------------------------------------


@pytest.mark.parametrize("image_form", ["binary", "struct"])
def test_parquet_round_trip(tmp_path: Path, image_form: str) -> None:
    samples = mixed_samples()
    path = write_parquet_pool(
        tmp_path / "p.parquet", samples, image_form=image_form, row_group_size=3
    )
    read = list(iter_samples(str(path)))
    assert [(s.key, s.index, s.image, s.image_ext, s.caption) for s in read] == [
        (s.key, i, s.image, s.ext, s.caption) for i, s in enumerate(samples)
    ]
    assert [sample_uid(r) for r in read] == [
        s.meta["uid"] if s.meta else _framed_hash(s.image, s.caption) for s in samples
    ]
    assert sample_url(read[0]) == samples[0].meta["url"]


def test_parquet_without_key_and_with_gaps(tmp_path: Path) -> None:
    samples = make_samples(4)
    samples[1].image = None
    samples[2].caption = None
    path = write_parquet_pool(tmp_path / "p.parquet", samples, with_key=False)
    read = list(iter_samples(str(path)))
    assert [s.key for s in read] == ["000000000", "000000001", "000000002", "000000003"]
    assert [s.error for s in read] == [None, "missing_image", "missing_caption", None]
    assert "key" not in read[0].meta and read[0].meta["uid"] == samples[0].meta["uid"]


def test_parquet_custom_columns_and_binary_captions(tmp_path: Path) -> None:
    img = make_image("png")
    table = pa.table(
        {"jpg": [img, img], "txt": [b"  Ein Hund ", b"caf\xe9"], "similarity": [0.3, 0.1]}
    )
    pq.write_table(table, tmp_path / "p.parquet")
    read = list(iter_samples(str(tmp_path / "p.parquet"), image_column="jpg", caption_column="txt"))
    assert [(s.caption, s.error, s.image_ext) for s in read] == [
        ("  Ein Hund ", None, "png"),  # as written
        (None, "caption_not_utf8", "png"),
    ]
    assert read[0].meta == {"similarity": 0.3}
    with pytest.raises(ShardReadError, match="no column 'image'"):
        list(iter_samples(str(tmp_path / "p.parquet")))
    with pytest.raises(ShardReadError, match="unsupported type"):
        list(
            iter_samples(
                str(tmp_path / "p.parquet"), image_column="similarity", caption_column="txt"
            )
        )


def test_corrupt_parquet_row_group_is_quarantined_alone(tmp_path: Path) -> None:
    samples = make_samples(12)
    path = write_parquet_pool(tmp_path / "p.parquet", samples, row_group_size=4)
    data = bytearray(path.read_bytes())
    offset = pq.ParquetFile(path).metadata.row_group(1).column(1).data_page_offset
    data[offset : offset + 40] = b"\xff" * 40  # break the page header of group 1
    path.write_bytes(bytes(data))
    read = list(iter_samples(str(path)))
    assert len(read) == 12 and [s.index for s in read] == list(range(12))
    errors = [s.error for s in read]
    assert errors == [None] * 4 + ["corrupt_parquet"] * 4 + [None] * 4
    assert [s.caption for s in read[8:]] == [s.caption for s in samples[8:]]


# --- selection and streaming ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_iter_selected_matches_full_read(tmp_path: Path, kind: str) -> None:
    samples = make_samples(10)
    path = (
        write_tar(tmp_path / "p.tar", samples)
        if kind == "tar"
        else write_parquet_pool(tmp_path / "p.parquet", samples, row_group_size=3)
    )
    full = list(iter_samples(str(path)))
    assert _summary(iter_selected(str(path), {7, 2, 3})) == _summary([full[2], full[3], full[7]])
    keys = {full[9].key: 1, full[0].key: 1}  # a dict works as well as a set
    assert _summary(iter_selected(str(path), keys)) == _summary([full[0], full[9]])
    assert list(iter_selected(str(path), set())) == []


def test_iter_selected_by_key_returns_every_repeat(tmp_path: Path) -> None:
    a, b = make_samples(2)
    repeat = PoolSample(a.key, make_image(seed=99), caption="Same key again")
    path = write_tar(tmp_path / "r.tar", [a, b, repeat])
    got = list(iter_selected(str(path), [a.key]))
    assert [(s.index, s.caption) for s in got] == [(0, a.caption), (2, "Same key again")]


def test_iter_selected_stops_after_last_index(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "p.tar", make_samples(4))
    cut = truncate_file(
        shutil.copy(path, tmp_path / "cut.tar"), member_offsets(path)["000000003.jpg"][1]
    )
    assert [s.error for s in iter_samples(str(cut))][-1] == "truncated_tar"
    assert [(s.index, s.error) for s in iter_selected(str(cut), [0, 1])] == [(0, None), (1, None)]


def test_streaming_memory_is_bounded_by_one_sample(tmp_path: Path) -> None:
    """48 MiB of 1 MiB images read with a peak of a few MiB: nothing holds the shard."""
    blob = b"\xff\xd8\xff" + bytes(1 << 20)
    samples = [PoolSample(f"{i:04d}", blob, caption=CAPTIONS[0]) for i in range(48)]
    path = write_tar(tmp_path / "big.tar", samples)
    tracemalloc.start()
    try:
        count = sum(1 for s in iter_samples(str(path)) if s.error is None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 48
    assert peak < 6 << 20


@pytest.mark.shared
def test_shared_flickr_shard_matches_webdataset() -> None:
    shard = str(shared_path("data", "images", "flickr8k-small-000000.tar"))
    ours = list(iter_samples(shard))
    theirs = list(wds.WebDataset(shard, shardshuffle=False, empty_check=False))
    assert [s.key for s in ours] == [t["__key__"] for t in theirs]
    assert all(s.error is None and s.caption and s.image_ext == "jpg" for s in ours)
    assert [s.caption for s in ours] == [t["txt"].decode() for t in theirs]


def test_selected_failed_downloads_keep_the_index_of_the_full_read(tmp_path: Path) -> None:
    """Defect: img2dataset's failed rows were numbered from one past the last *selected* tar
    sample, so a selection (publishing, the report's pictures) gave them other indices than
    the full read that scored them, and the one without a key another key."""
    ok = make_samples(3, seed=41)
    write_tar(tmp_path / "00000.tar", ok)
    rows = [{"key": s.key, "status": "success", "error_message": None} for s in ok]
    rows += [
        {"key": "000000003", "status": "failed_to_download", "error_message": "HTTP Error 404"},
        {"key": None, "status": "failed_to_resize", "error_message": "cannot identify"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    url = str(tmp_path / "00000.tar")
    full = [(s.index, s.key, s.error) for s in iter_samples(url)]
    assert full == [
        *[(i, s.key, None) for i, s in enumerate(ok)],
        (3, "000000003", "download_failed"),
        (4, "failed000000004", "download_failed"),
    ]
    for size in range(1, len(full) + 1):
        for wanted in itertools.combinations(range(len(full)), size):
            got = [(s.index, s.key, s.error) for s in iter_selected(url, list(wanted))]
            assert got == [full[i] for i in wanted], wanted
