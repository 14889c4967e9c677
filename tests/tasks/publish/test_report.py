"""Report helpers shared by both flows: tables that add up and escape their cells."""

from __future__ import annotations

from schemas.tables import STATUSES
from tasks.publish.report import md_table, status_counts_table
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
