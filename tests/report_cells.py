"""Reading back what a report shows, to compare it with the result rows it was made from.

The tables of report.html are parsed with the standard library's HTML parser (no report code):
each numeric cell carries its full value in ``data-v``, so a cell can be matched to a row by
exact float equality, and a mean of two rows matches none."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pandas as pd


@dataclass
class Table:
    section: str  # the h2 it is under (its id)
    title: str  # the h3 before it
    header: list[str] = field(default_factory=list)
    rows: list[list[tuple[str, float | None]]] = field(default_factory=list)  # (text, data-v)


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[Table] = []
        self.section = self.title = ""
        self._text: list[str] | None = None
        self._cell: tuple[str, float | None] | None = None
        self._value: float | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs.get("id", "")
            self.title = ""
        elif tag in ("h3", "th", "td"):
            self._text = []
            self._value = float(attrs["data-v"]) if "data-v" in attrs else None
        elif tag == "table":
            self.tables.append(Table(self.section, self.title))
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self.tables and not self._in_head:
            self.tables[-1].rows.append([])

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag not in ("h3", "th", "td") or self._text is None:
            return
        text = "".join(self._text).strip()
        self._text = None
        if tag == "h3":
            self.title = text
        elif tag == "th":
            self.tables[-1].header.append(text)
        else:
            self.tables[-1].rows[-1].append((text, self._value))


def html_tables(page: str) -> list[Table]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return re.sub(r"\.0$", "", str(value))


def label_fits(row: pd.Series, label: str, title: str) -> bool:
    """Whether a leaderboard / detail column label and table title name this row: its task in the
    title, its layer, k and metric, and its evaluation, backend and cost selection where it has them."""
    task, layer, k, metric = (_text(row.get(c)) for c in ("task", "layer", "k", "metric"))
    evaluation, backend, selection = (_text(row.get(c)) for c in ("evaluation", "backend", "cost_selection"))
    if not (title == task or title.startswith(task + " ") or title.endswith(": " + task)
            or (": " + task + " ") in title):
        return False
    head = layer + (f" k={k}" if k else "") + ":" + metric
    if not (label == head or label.startswith(head + " ")):
        return False
    if ("(" + evaluation + ")" in label) != bool(evaluation) or (not evaluation and "(" in label):
        return False
    if backend and "[" + backend + "]" not in label:
        return False
    return not ("[cost: " in title and selection and f"[cost: {selection}]" not in title)


def check_cells_are_rows(tables: list[Table], rows: pd.DataFrame) -> int:
    """Every numeric cell of the given tables is the value of exactly one row of ``rows`` whose
    model is the table row's first cell and whose keys the column label and title name. Returns the
    number of cells checked; raises AssertionError naming the first cell that is no row."""
    checked = 0
    values = pd.to_numeric(rows["value"], errors="coerce")
    for table in tables:
        for cells in table.rows:
            model = cells[0][0]
            for label, (text, value) in zip(table.header[1:], cells[1:]):
                if value is None:
                    assert text == "", f"{table.title} / {label} / {model}: '{text}' has no data-v"
                    continue
                same = rows[(rows["model"].astype(str) == model) & (values == value)]
                named = [r for _, r in same.iterrows() if label_fits(r, label, table.title)]
                assert len(named) == 1, (f"{table.section}: '{table.title}', column '{label}', model {model}: "
                                         f"{value!r} is {len(named)} rows, not one (rows of that value: "
                                         f"{same[['task', 'layer', 'metric']].to_dict('records')})")
                checked += 1
    return checked
