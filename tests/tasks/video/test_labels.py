"""Labels CSV: validation with row-naming errors, and the frame-overlap rule by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.video.labels import (
    LabelError,
    LabelRow,
    clip_spans,
    frame_labels,
    labelled_videos,
    match_inputs,
    names,
    parse_labels,
    positive_spans,
    read_labels,
)

CSV = """video,start_s,end_s,label
a.mp4,1.0,2.0,near_miss
.\\raw\\b.mp4, 0.30 , 0.40 ,Collision
a.mp4,5.0,6.0,normal
c.mp4,0,10,normal
"""


def test_parse_normalises_names_and_labels(tmp_path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("\ufeff" + CSV, encoding="utf-8")  # a spreadsheet's BOM
    rows = read_labels(path)
    assert rows[0] == LabelRow("a.mp4", 1.0, 2.0, "near_miss")
    assert rows[1] == LabelRow("raw/b.mp4", 0.3, 0.4, "collision") and rows[1].positive
    assert not rows[2].positive
    assert labelled_videos(rows) == {"a.mp4", "raw/b.mp4", "c.mp4"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.mp4,2.0,1.0,near_miss", "line 3: need 0 <= start_s < end_s, got 2.0, 1.0"),
        ("a.mp4,1.0,1.0,near_miss", "line 3: need 0 <= start_s < end_s"),
        ("a.mp4,-1,1.0,normal", "line 3: need 0 <= start_s < end_s"),
        ("a.mp4,0,nan,normal", "line 3: need 0 <= start_s < end_s"),
        ("a.mp4,x,1.0,normal", "line 3: start_s/end_s must be numbers"),
        ("a.mp4,0,1.0,crash", "line 3: unknown label 'crash' (known: collision, near_miss"),
        (",0,1.0,normal", "line 3: empty video name"),
    ],
)
def test_bad_rows_name_their_line(line: str, message: str) -> None:
    text = f"video,start_s,end_s,label\nz.mp4,0,1,normal\n{line}\n"
    with pytest.raises(LabelError) as err:
        parse_labels(text, source="l.csv")
    assert str(err.value).startswith("l.csv ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_column() -> None:
    with pytest.raises(LabelError, match=r"lacks column.*label"):
        parse_labels("video,start_s,end_s\na.mp4,0,1\n")


def test_positive_spans_merge_overlaps_only() -> None:
    rows = parse_labels(
        "video,start_s,end_s,label\n"
        "v.mp4,4,6,near_miss\nv.mp4,1,3,near_miss\nv.mp4,2.5,3.5,collision\n"
        "v.mp4,6,7,near_miss\nv.mp4,0,10,normal\nw.mp4,0,1,normal\n"
    )
    assert positive_spans(rows, "s3://bucket/x/v.mp4") == [(1, 3.5), (4, 6), (6, 7)]
    assert positive_spans(rows, "w.mp4") == []
    assert positive_spans(rows, "other.mp4") is None


def test_frame_labels_overlap_rule() -> None:
    # 4 samples/s: frame at t covers [t, t + 0.25)
    rows = parse_labels(
        "video,start_s,end_s,label\n"
        "v.mp4,1.0,2.0,near_miss\n"  # aligned: frames 1.0, 1.25, 1.5, 1.75
        "v.mp4,3.05,3.2,collision\n"  # inside one frame (3.0) and no sample time in it
        "v.mp4,4.1,4.6,near_miss\n"  # partial overlaps: 4.0 ([4, 4.25)) ... 4.5
        "v.mp4,0,10,normal\n"
    )
    t = np.arange(24) * 0.25
    y = frame_labels(rows, "v.mp4", t, 0.25)
    expected = {1.0, 1.25, 1.5, 1.75, 3.0, 4.0, 4.25, 4.5}
    assert y.dtype == bool
    assert {float(x) for x in t[y]} == expected
    # float noise in frame times does not create a sliver of overlap at the boundaries
    y_noisy = frame_labels(rows, "v.mp4", t + 1e-12, 0.25)
    assert {round(float(x), 6) for x in t[y_noisy]} == expected
    assert frame_labels(rows, "unknown.mp4", t, 0.25) is None
    negative = parse_labels("video,start_s,end_s,label\nn.mp4,0,9,normal\n")
    assert not frame_labels(negative, "n.mp4", t, 0.25).any()


def test_a_name_means_the_inputs_whose_path_ends_with_it() -> None:
    url = "s3://fleet/2026-01-01/truck7/cam.mp4"
    assert names("cam.mp4", url) and names("truck7/cam.mp4", url) and names(url, url)
    assert not names("m.mp4", url)  # whole path components only
    assert not names("truck8/cam.mp4", url)


def test_a_name_that_fits_two_inputs_is_refused() -> None:
    """Issue 27, case 6: `a/cam.mp4` and `b/cam.mp4` are two videos; a label must say
    which one it means."""
    urls = ["s3://f/a/cam.mp4", "s3://f/b/cam.mp4", "s3://f/c.mp4"]
    rows = parse_labels("video,start_s,end_s,label\na/cam.mp4,0,1,near_miss\nz.mp4,0,1,normal\n")
    assert match_inputs(rows, urls) == (["s3://f/a/cam.mp4"], ["z.mp4"])
    assert positive_spans(rows, urls[0]) == [(0.0, 1.0)] and positive_spans(rows, urls[1]) is None
    vague = parse_labels("video,start_s,end_s,label\ncam.mp4,0,1,near_miss\n")
    with pytest.raises(LabelError, match=r"'cam\.mp4' fits 2 inputs .*write more of its path"):
        match_inputs(vague, urls)


def test_spans_past_the_end_are_cut_or_dropped() -> None:
    spans = [(0.5, 1.0), (2.5, 4.0), (10.0, 12.0)]
    assert clip_spans(spans, 3.0) == ([(0.5, 1.0), (2.5, 3.0)], 2)
    assert clip_spans(spans, 20.0) == (spans, 0)
