"""Vehicle telemetry beside a video (speed, acceleration) and the hard-braking / swerve
cue made from it (`read.py`, `cue.py`); `night.py` puts a night's videos together."""
