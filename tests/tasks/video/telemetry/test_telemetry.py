"""Telemetry beside a video: the four file kinds read onto the video's clock, and the
hard-braking / swerve cue against drives whose truth is known (`tests/telemetry_factory`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.video.telemetry.cue import danger, kinematics, per_frame, vehicle_scales
from tasks.video.telemetry.night import night_telemetry
from tasks.video.telemetry.read import read_track
from tests.telemetry_factory import (
    START,
    drive,
    every,
    write_csv,
    write_gpx,
    write_json,
    write_nmea,
)

BRAKE = (20.0, 1.5, 6.0)  # at 20 s, for 1.5 s, 6 m/s^2


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "cam.mp4"
    path.write_bytes(b"not decoded here")
    return path


@pytest.mark.parametrize("kind", ["csv", "json", "gpx", "nmea"])
def test_every_file_kind_gives_speed_on_the_videos_clock(video: Path, kind: str) -> None:
    d = drive(40, brakes=(BRAKE,))
    gps = every(d, 1.0)  # GPS files log once a second
    start = None
    if kind == "csv":
        write_csv(video.with_suffix(".csv"), d)
    elif kind == "json":
        write_json(video.with_suffix(".json"), d, vehicle_id="v1")
    elif kind == "gpx":
        write_gpx(video.with_suffix(".gpx"), gps)
    else:
        write_nmea(video.with_suffix(".nmea"), gps)
    if kind in ("gpx", "nmea"):  # a recorder starting 5 s after its log: the sidecar says so
        start = (START.replace(second=5)).isoformat()
        (video.with_suffix(".json")).write_text(json.dumps({"start_time": start}))
    track = read_track(str(video), None, start_time=start)
    assert track is not None and track.source.endswith(kind)
    at = (track.t_s >= 10) & (track.t_s <= 30)
    truth = np.interp(track.t_s[at], d.t - (5 if start else 0), d.speed)
    speed = track.speed_mps[at]
    if kind == "gpx":  # no speed in the file: from positions, kinematics derives it
        k = kinematics(track)
        speed = np.interp(track.t_s[at], k.t_s, k.speed)
        assert np.median(np.abs(speed - truth)) < 0.6
    else:
        assert np.max(np.abs(speed - truth)) < 0.01
    assert track.t_s[0] == pytest.approx(-5.0 if start else 0.0)


def test_broken_telemetry_is_ignored(video: Path, caplog: pytest.LogCaptureFixture) -> None:
    video.with_suffix(".gpx").write_text("<gpx><trk><trkseg><trkpt lat='x'")
    assert read_track(str(video), None) is None
    assert "ignoring telemetry" in caplog.text
    video.with_suffix(".csv").write_text("t_s,speed_mps\n0,10\n1,11\n")  # the next kind is read
    assert read_track(str(video), None).speed_mps.tolist() == [10.0, 11.0]


def test_braking_gives_the_longitudinal_acceleration(video: Path) -> None:
    write_csv(video.with_suffix(".csv"), drive(40, brakes=(BRAKE,), noise=0.0))
    k = kinematics(read_track(str(video), None))
    during = (k.t_s > 20.4) & (k.t_s < 21.1)
    assert np.allclose(k.accel_long[during], -6.0, atol=0.05)
    assert np.abs(k.accel_long[k.t_s < 15]).max() < 0.1


def test_a_turn_gives_the_lateral_acceleration_from_positions(video: Path) -> None:
    """10 s at 0.3 rad/s, 15 m/s: a = v * yaw rate = 4.5 m/s^2, from 1 Hz positions only."""
    d = drive(50, turn=(20.0, 10.0, 0.3), noise=0.0)
    write_gpx(video.with_suffix(".gpx"), every(d, 1.0))
    k = kinematics(read_track(str(video), None))
    during = (k.t_s > 22) & (k.t_s < 28)
    assert np.median(np.abs(k.accel_lat[during])) == pytest.approx(4.5, rel=0.05)
    assert np.nanmax(np.abs(k.accel_lat[k.t_s < 18])) < 0.3


def test_the_cue_peaks_at_the_hard_brake_and_not_at_a_normal_stop(video: Path) -> None:
    d = drive(60, brakes=(BRAKE, (40.0, 4.0, 1.5)))  # a hard brake, then a gentle one
    write_csv(video.with_suffix(".csv"), d)
    k = kinematics(read_track(str(video), None))
    z = danger(k, vehicle_scales([k]))
    hard = z[(k.t_s > 20) & (k.t_s < 22)].max()
    gentle = z[(k.t_s > 40) & (k.t_s < 44)].max()
    assert hard > 5.5 and gentle < 2.5 and np.median(z) < 0.5
    frames = per_frame(k, vehicle_scales([k]), np.arange(0, 70, 0.5), 2.0)
    peak = np.nanargmax(frames["telemetry"])
    assert 19.5 <= peak * 0.5 <= 21.5
    assert np.isnan(frames["telemetry"][np.arange(0, 70, 0.5) > 60]).all()  # no telemetry


def test_scales_are_per_vehicle(tmp_path: Path) -> None:
    """A truck whose G-sensor shakes on rough roads (3 m/s^2 of vibration) sets its own
    baseline: the same 6 m/s^2 brake stands out less for it than for a smooth car."""
    urls, sides = [], {}
    for name, vehicle, shake in (("a1", "car", 0.1), ("a2", "car", 0.1), ("b1", "truck", 3.0)):
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(b"x")
        d = drive(120, brakes=(BRAKE,), noise=0.0)
        write_csv(path.with_suffix(".csv"), d, sensor_noise=shake, seed=len(urls))
        urls.append(str(path))
        sides[str(path)] = {"vehicle_id": vehicle}
    night = night_telemetry(urls, sides, None, urls)
    assert night[urls[0]][1] == night[urls[1]][1]  # one vehicle, one set of scales
    # hand-worked: the car's spread is the floor, 1 m/s^2; the truck's 1.4826 x MAD of
    # N(0, 3) = 3 m/s^2: its 6 m/s^2 brake is z 2, the car's z 6
    assert night[urls[0]][1]["brake"][1] == 1.0
    assert night[urls[2]][1]["brake"][1] == pytest.approx(3.0, rel=0.1)
    during = {u: np.median(danger(*night[u])[(night[u][0].t_s > 20.3) & (night[u][0].t_s < 21.3)])
              for u in urls}  # fmt: skip
    assert during[urls[0]] == pytest.approx(6.0, abs=0.3)
    assert during[urls[2]] < 0.5 * during[urls[0]]
