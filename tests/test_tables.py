"""Report tables: whole in Markdown, in parts that fit the terminal, no cell ever cut."""

from __future__ import annotations

import pytest
from rich.console import Console

from ce_bench.tables import Grid, show

WIDE = Grid(
    "Lifelong editing, zsre (eval after T edits)",
    ["editor", *(f"T={t} {m}" for t in (1, 10, 100) for m in ("Rel.", "Gen.", "Loc.", "Avg."))],
    [
        ["unedited", *["0.17"] * 12],
        ["microedit:alpha=auto,sae_path=layer27-8c00625377", *["+0.35 [+0.25, +0.45]"] * 12],
        ["Average", *["1.00"] * 12],
    ],
    bold={"Average"},
)


def _printed(grid: Grid, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    show(console, grid)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120, 200])
def test_a_wide_table_is_printed_in_parts_that_fit_with_no_cell_cut(width):
    text = _printed(WIDE, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for row in WIDE.rows:  # every cell, whole, and the key column in every part
        assert text.count(row[0]) == len(WIDE.parts(width))
    assert text.count("+0.35 [+0.25, +0.45]") == 12


def test_a_table_that_fits_is_one_part_with_its_own_title():
    grid = Grid("Editing success (%)", ["emotion", "NE", "SAE"], [["anger", "12.50", "50.00"]])
    assert grid.parts(80) == [[0, 1, 2]]
    text = _printed(grid, 80)
    assert "Editing success (%)" in text and "(1/" not in text


def test_parts_repeat_the_key_columns():
    grid = Grid(
        "t", ["editor", "T", "a" * 30, "b" * 30, "c" * 30], [["x", "1", "", "", ""]], keys=2
    )
    assert grid.parts(80) == [[0, 1, 2, 3], [0, 1, 4]]


def test_markdown_keeps_the_whole_width():
    lines = WIDE.markdown().splitlines()
    assert lines[0].startswith("| editor | T=1 Rel. |") and lines[0].endswith("| T=100 Avg. |")
    assert lines[1] == "| --- |" + " ---: |" * 12
    assert len(lines) == 2 + len(WIDE.rows)


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="has 2 cells, not 3"):
        Grid("t", ["a", "b", "c"], [["1", "2"]])
