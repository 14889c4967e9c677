"""A small filesystem for a command: a size-limited tmpfs in a private mount namespace.

`run_on_small_disk` runs a command with a fresh tmpfs of `size` bytes mounted at `mount`
(seeded with a copy of `seed`), then copies what the tmpfs holds to `after` for the test to
inspect. The mount lives in its own namespace (`unshare -rm`: unprivileged where user
namespaces are allowed), so it vanishes with the command and nothing else sees it. A write
that does not fit fails with the kernel's own ENOSPC, whichever code makes it.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

PAGE = 4096


@functools.cache
def available() -> str | None:
    """None when a tmpfs can be mounted this way here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    with tempfile.TemporaryDirectory() as d:
        try:
            proc = subprocess.run(
                ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {d}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"unshare failed: {err}"
    return None if proc.returncode == 0 else f"cannot mount a tmpfs: {proc.stderr.strip()}"


def disk_usage(folder: Path) -> int:
    """Bytes the files under `folder` take on a tmpfs (whole pages), directories included."""
    total = 0
    for root, dirs, files in os.walk(folder):
        total += PAGE * len(dirs)
        for name in files:
            size = os.path.getsize(os.path.join(root, name))
            total += -(-size // PAGE) * PAGE
    return total


def run_on_small_disk(
    argv: list[str],
    *,
    mount: Path,
    size: int,
    seed: Path | None,
    after: Path,
    env: dict[str, str],
    cwd: Path,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """Run `argv` with a tmpfs of `size` bytes at `mount`; its content ends up in `after`."""
    mount.mkdir(parents=True, exist_ok=True)
    after.mkdir(parents=True, exist_ok=True)
    pages = -(-size // PAGE)
    fill = f"cp -a {shlex.quote(str(seed))}/. {shlex.quote(str(mount))}/" if seed else "true"
    script = (
        f"mount -t tmpfs -o size={pages * PAGE} tmpfs {shlex.quote(str(mount))} && {fill} && "
        f'{{ "$@"; rc=$?; cp -a {shlex.quote(str(mount))}/. {shlex.quote(str(after))}/; '
        "exit $rc; }"
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
