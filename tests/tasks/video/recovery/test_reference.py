"""Which healthy recordings may serve as a lost file's reference, and what a quarantine says
when none may."""

from __future__ import annotations

from tasks.video.recovery.reference import candidates


def test_candidates_are_same_vehicle_h264_siblings_own_folder_first() -> None:
    rows = {
        "s3://b/2026-01-01/cam1/c.mp4": {"status": "ok", "codec": "h264"},
        "s3://b/2026-01-01/cam1/lost.mp4": {"status": "quarantined", "codec": None},
        "s3://b/2026-01-01/a.mp4": {"status": "ok", "codec": "h264"},
        "s3://b/2026-01-01/cam1/b.mp4": {"status": "ok", "codec": "h264"},
        "s3://b/2026-01-01/cam1/x.mp4": {"status": "quarantined", "codec": "h264"},
        "s3://b/2026-01-01/cam1/other.mp4": {"status": "ok", "codec": "h264"},
    }
    vehicles = {u: "v1" for u in rows} | {"s3://b/2026-01-01/cam1/other.mp4": "v2"}
    refs, wanted = candidates("s3://b/2026-01-01/cam1/lost.mp4", rows, vehicles)
    assert refs == [
        "s3://b/2026-01-01/cam1/b.mp4",
        "s3://b/2026-01-01/cam1/c.mp4",
        "s3://b/2026-01-01/a.mp4",
    ]
    assert wanted == "healthy H.264 recording of vehicle v1"


def test_an_hevc_camera_is_told_apart_from_a_missing_reference() -> None:
    """Only H.264 media data is rebuilt: a lost file whose camera records HEVC says so,
    instead of reading as if no healthy recording existed."""
    rows = {
        "/in/lost.mp4": {"status": "quarantined", "codec": None},
        "/in/a.mp4": {"status": "ok", "codec": "hevc"},
        "/in/b.mp4": {"status": "ok", "codec": "hevc"},
    }
    refs, wanted = candidates("/in/lost.mp4", rows, {u: None for u in rows})
    assert refs == []
    assert wanted == (
        "healthy H.264 recording of the same size (its healthy recordings are hevc; "
        "only H.264 is rebuilt)"
    )
    refs, wanted = candidates("/in/lost.mp4", {"/in/lost.mp4": rows["/in/lost.mp4"]}, {})
    assert (refs, wanted) == ([], "healthy H.264 recording of the same size")
