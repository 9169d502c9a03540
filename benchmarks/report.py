"""Tables for the terminal and for RESULTS.md, and replacing the results section there.

Owns: rendering one table (headers + string rows) as aligned text or as Markdown, number
formatting, and rewriting the part of RESULTS.md between the two result markers while
keeping everything outside them (hand-written commentary) intact.
Must not touch: measuring anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "<!-- pooling-results:begin (written by benchmarks/run.py; edits here are lost) -->"
END = "<!-- pooling-results:end -->"


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def text(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        out = [self.title, line(self.headers), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def markdown(self, level: str = "###") -> str:
        align = ["---"] + ["---:"] * (len(self.headers) - 1)
        out = [f"{level} {self.title}", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        out.append("| " + " | ".join(align) + " |")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        if self.note:
            out += ["", self.note]
        return "\n".join(out)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def divide(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def write_results_section(
    path: Path, body: str, title: str, begin: str = BEGIN, end: str = END
) -> None:
    """Replace the text between ``begin`` and ``end`` (or append the section) in ``path``."""
    section = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else f"# {title}\n\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
