"""Recovering truncated recordings: a moov-less MP4/MOV rebuilt from its media data with a
healthy file of the same camera as the reference (the untrunc approach), and the readable
prefix of a file cut after an intact header."""
