"""A report's table, made once and shown twice: whole in Markdown, and in the terminal in parts
that fit its width.

A rich Table wider than the terminal squeezes its columns until numbers turn into "…". A `Grid`
instead splits its value columns into groups that fit, each part repeating the key columns (the
method, the class), so that every cell is shown whole at 80 columns as at 200. The Markdown
file keeps the full width.

Example:
    >>> grid = Grid("Editing success (%)", ["emotion", "NE", "SAE"], [["anger", "12.5", "50.0"]])
    >>> show(console, grid)
    >>> Path("table.md").write_text(grid.markdown())
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# What a column costs beyond its text in rich's default box: a border and one space each side.
_COLUMN_FRAME = 3


@dataclass
class Grid:
    """Headings and rows of text; the first `keys` columns name a row and are repeated in every
    part; rows whose first cell is in `bold` (an average, a trimmed mean) are emphasised."""

    title: str
    headings: list[str]
    rows: list[list[str]]
    keys: int = 1
    bold: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.headings):
                raise ValueError(f"{self.title}: row {row} has {len(row)} cells, not"
                                 f" {len(self.headings)}")  # fmt: skip

    def markdown(self) -> str:
        """The whole table as Markdown (no title: files put their own note above it)."""
        align = ["---"] * self.keys + ["---:"] * (len(self.headings) - self.keys)
        lines = [self.headings, align, *self.rows]
        return "".join(f"| {' | '.join(line)} |\n" for line in lines)

    def parts(self, width: int) -> list[list[int]]:
        """Column indices of each part: the keys, then as many value columns as fit `width`."""
        widths = [
            max(cell_len(c) for c in [h, *(row[i] for row in self.rows)])
            for i, h in enumerate(self.headings)
        ]
        keys = list(range(self.keys))
        base = 1 + sum(widths[i] + _COLUMN_FRAME for i in keys)
        parts: list[list[int]] = []
        used = width  # start a part at the first value column
        for i in range(self.keys, len(self.headings)):
            cost = widths[i] + _COLUMN_FRAME
            if used + cost > width:
                parts.append(list(keys))
                used = base
            parts[-1].append(i)
            used += cost
        return parts or [keys]

    def tables(self, width: int) -> list[Table]:
        """rich Tables of the parts; the title says which part each is when there are several."""
        parts = self.parts(width)
        tables = []
        for n, columns in enumerate(parts, 1):
            title = self.title if len(parts) == 1 else f"{self.title} ({n}/{len(parts)})"
            table = Table(title=escape(title), title_justify="left")
            for i in columns:
                table.add_column(escape(self.headings[i]), justify="left" if i < self.keys else
                                 "right", no_wrap=True)  # fmt: skip
            for row in self.rows:
                style = "bold" if row[0] in self.bold else None
                table.add_row(*(escape(row[i]) for i in columns), style=style)
            tables.append(table)
        return tables


def show(console: Console, grid: Grid) -> None:
    """Print `grid` in parts that fit the console."""
    for table in grid.tables(console.width):
        console.print(table)
