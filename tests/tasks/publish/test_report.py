"""Report helpers shared by both flows: tables that add up and escape their cells, figures
that draw from several threads at once, and report failures as one line."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from schemas.tables import STATUSES
from tasks.pool.report import plot_entry_ranks
from tasks.publish.report import (
    ReportError,
    md_table,
    new_figure,
    partition_report,
    save_figure,
    status_counts_table,
)
from tests.report_helpers import md_rows

COUNTS = {
    "input": 12,
    "kept": 5,
    "filtered_text": 2,
    "filtered_image": 0,
    "filtered_clip": 3,
    "filtered_head": 0,
    "filtered_balance": 0,
    "duplicate": 1,
    "quarantined": 1,
}


def test_status_counts_table_adds_up_and_flags_mismatch() -> None:
    md = status_counts_table(COUNTS)
    rows = {r[0]: r for r in md_rows(md, "status")}
    assert sum(int(rows[s][1]) for s in STATUSES) == int(rows["**sum**"][1]) == 12
    assert rows["kept"][2] == "41.7%" and rows["**input**"][1] == "12"
    assert md.endswith("Check: sum of statuses = 12 = input ✓")
    bad = status_counts_table({"input": 3, "ok": 1, "quarantined": 1})
    assert "MISMATCH" in bad and "sum of statuses 2 ≠ input 3" in bad


def test_md_table_escapes_cells() -> None:
    md = md_table(["a", "b"], [["x|y\nz", 0.123456789], [None, 3]])
    assert md.splitlines()[2] == "| x\\|y z | 0.1235 |"
    assert md.splitlines()[3] == "| – | 3 |"


# --- drawing from several threads at once ------------------------------------------------------

THREADS, ROUNDS = 4, 3


def _log_plot(out: Path, i: int) -> str:
    """The pool's log-scale rank plot: its tick labels go through matplotlib's mathtext."""
    counts = np.arange(1, 40 + 7 * i)[::-1] * (i + 1)
    return plot_entry_ranks((counts, counts // 3 + 1), 5, str(out), None)


def _math_plot(out: Path, i: int) -> str:
    """A figure whose text is mathtext no other figure holds (nothing cached can serve it)."""
    fig, ax = new_figure()
    ax.plot([1, 2, 3], [i, i + 1, i * 2])
    ax.set_title(f"$x^{{{i}}} + \\sqrt{{{i + 1}}}$")
    return save_figure(fig, str(out), "plots/math.png", None)


def test_figures_drawn_from_many_threads_at_once_never_fail(tmp_path: Path) -> None:
    """Defect: `curate backfill --max-parallel 2` with balancing failed every date with
    mathtext's ParseException, two partitions drawing log-scale plots at once. Here 8 threads
    start drawing together, 5 rounds; on the unlocked code every round failed (20 of 20
    rounds measured, and 26 of 30 with 2 threads). The PNGs must equal one-at-a-time ones."""
    errors: list[BaseException] = []
    for r in range(ROUNDS):
        barrier = threading.Barrier(THREADS)

        def draw(i: int, r: int = r, barrier: threading.Barrier = barrier) -> None:
            k = r * THREADS + i
            barrier.wait()
            try:
                (_log_plot if i % 2 else _math_plot)(tmp_path / "threads" / str(k), k)
            except Exception as err:  # collected, asserted below
                errors.append(err)

        threads = [threading.Thread(target=draw, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    for k in range(ROUNDS * THREADS):
        (_log_plot if k % 2 else _math_plot)(tmp_path / "serial" / str(k), k)
    pngs = sorted((tmp_path / "serial").rglob("*.png"))
    assert len(pngs) == ROUNDS * THREADS
    for png in pngs:
        rel = png.relative_to(tmp_path / "serial")
        assert (tmp_path / "threads" / rel).read_bytes() == png.read_bytes(), rel


def test_a_figure_that_cannot_be_drawn_is_one_report_error_line(tmp_path, monkeypatch) -> None:
    """The figure is named, mathtext's message (which starts with a newline) gives its first
    real line, and the partition's wrapper says what is and is not lost."""
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise ValueError("\n\\mathdefault{10^{1}}\n^\nParseFatalException: Unknown symbol")

    monkeypatch.setattr(Figure, "tight_layout", broken)
    with pytest.raises(ReportError) as info:
        partition_report(lambda: [_math_plot(tmp_path, 1)], "2026-01-02")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("report of 2026-01-02 not written (figure plots/math.png: ValueError:")
    assert "\\mathdefault{10^{1}}" in line
    assert line.endswith("the scores stay cached: re-run to publish")
    assert not (tmp_path / "plots" / "math.png").exists()
    # a store that fails is not a report bug: it goes on as what it is
    with pytest.raises(FileNotFoundError):
        partition_report(lambda: (_ for _ in ()).throw(FileNotFoundError("gone")), "d")
