"""One self-contained report.html per run: everything the report writes (leaderboard tables,
figures, notes), plus the cost and provenance of every unit, failed units with their errors and,
when asked, published numbers in their own marked section. Nothing is fetched when it is opened:
the style and the table-sorting script are inline, figures are base64 PNGs."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SIGNIFICANCE_LEGEND = ("Bold: not significantly worse than the best of its column (paired permutation test over "
                       "the test images, p > 0.05, as in SimCLR's Table 8); [low, high]: bootstrap 95 % interval "
                       "over the test images; hover a number for its p-value.")

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:0 1.2em 3em;color:#1d2430}
h1{font-size:1.6em;margin:1em 0 .2em}h2{border-bottom:1px solid #d0d6de;padding-bottom:.2em;margin-top:1.8em}
h3{margin:1.2em 0 .4em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.88em}
th,td{border:1px solid #d0d6de;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#eef2f6;position:sticky;top:0}th.sortable{cursor:pointer}th.sortable:after{content:" \\2195";color:#8a96a3}
th[aria-sort=ascending]:after{content:" \\2191"}th[aria-sort=descending]:after{content:" \\2193"}
td:first-child,th:first-child{text-align:left}tr:nth-child(even) td{background:#f8fafc}
.scroll{overflow-x:auto}.warn{background:#fff5d6;border-left:4px solid #e0a800;padding:.5em .8em}
.published{background:#eef6ff;border-left:4px solid #3b82f6;padding:.5em .8em}
.failed{background:#fdecec;border-left:4px solid #d33;padding:.5em .8em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e3e7ec}figcaption{color:#4b5563;font-size:.9em}
pre{background:#f4f6f8;padding:.6em;overflow-x:auto;font-size:.8em;max-height:18em}
.meta{color:#4b5563}td.not-worse{font-weight:700}td small{color:#6b7280;font-weight:400}
"""  # noqa: E501 - one CSS rule set per line, as the report carries it

# click a header: sort by that column (numbers numerically, empty cells last); click again: reverse
SCRIPT = """
(function(){
  function key(cell){var t=cell.getAttribute('data-v');if(t===null)t=cell.textContent.trim();
    var n=parseFloat(t);return {empty:t==='',num:!isNaN(n)&&isFinite(t),n:n,t:t};}
  function sortBy(table,index,th){
    var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
    var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
    rows.sort(function(a,b){var x=key(a.cells[index]),y=key(b.cells[index]);
      if(x.empty!==y.empty)return x.empty?1:-1;
      if(x.num&&y.num)return dir*(x.n-y.n);return dir*x.t.localeCompare(y.t);});
    rows.forEach(function(r){body.appendChild(r);});
    Array.prototype.forEach.call(table.querySelectorAll('th'),function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir===1?'ascending':'descending');}
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads=table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads,function(th,i){th.classList.add('sortable');
      th.addEventListener('click',function(){sortBy(table,i,th);});});});
  document.body.setAttribute('data-report-ready','1');
})();
"""


@dataclass
class HtmlReport:
    title: str
    leaderboard: list[tuple[str, pd.DataFrame, str]] = field(default_factory=list)  # (section, table, warning)
    marks: dict = field(default_factory=dict)  # leaderboard section -> {(model, column): significance Mark}
    best_layer: pd.DataFrame | None = None  # numbers each followed by a '[layer]' column naming their layer
    best_layer_note: str = ""
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)
    details: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # detection/normals and other tables
    published: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    published_note: str = ""
    costs: pd.DataFrame | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (unit, error text)
    notes: list[tuple[str, list[str]]] = field(default_factory=list)
    meta: str = ""


def _cell(value, digits: int = 2, mark=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "<td></td>"
    if isinstance(value, float):
        if mark is not None:  # a benchmark.report_significance.Mark
            bold = ' class="not-worse"' if mark.not_worse else ""
            return (f'<td data-v="{float(value)!r}"{bold} title="{html.escape(mark.title())}">{value:.{digits}f}'
                    f'<small> [{mark.low:.1f}, {mark.high:.1f}]</small></td>')
        return f'<td data-v="{float(value)!r}">{value:.{digits}f}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table_html(table: pd.DataFrame, index_name: str | None = None, digits: int = 2, marks: dict | None = None) -> str:
    """A sortable table; the index (when named or given) is the first column. ``marks``: (index,
    column) -> significance Mark, shown bold where not worse than the best, with its interval."""
    show_index = index_name is not None or table.index.name is not None
    heads = ([index_name or table.index.name] if show_index else []) + [str(c) for c in table.columns]
    out = ['<div class="scroll"><table class="sortable"><thead><tr>']
    out += [f"<th>{html.escape(str(h))}</th>" for h in heads]
    out.append("</tr></thead><tbody>")
    for index, row in table.iterrows():
        out.append("<tr>" + (_cell(index) if show_index else "")
                   + "".join(_cell(v, digits, (marks or {}).get((index, c))) for c, v in zip(table.columns, row.values))
                   + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _figure(caption: str, path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(Path(path).name)}: {html.escape(caption)}</figcaption></figure>")


def render(report: HtmlReport) -> str:
    sections = []
    nav = []

    def section(anchor: str, title: str, body: str) -> None:
        nav.append(f'<a href="#{anchor}">{html.escape(title)}</a>')
        sections.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')

    if report.leaderboard:
        body = []
        for title, table, warning in report.leaderboard:
            body.append(f"<h3>{html.escape(title)}</h3>")
            if warning:
                body.append(f'<p class="warn">{html.escape(warning)}</p>')
            marks = report.marks.get(title)
            body.append(table_html(table, "model", marks=marks))
            if marks:
                body.append(f"<p class=\"meta\">{html.escape(SIGNIFICANCE_LEGEND)}</p>")
        section("leaderboard", "Leaderboard", "".join(body))
    else:
        section("leaderboard", "Leaderboard", "<p>No finished results yet.</p>")
    if report.best_layer is not None and not report.best_layer.empty:
        section("best-layer", "Best layer per model",
                f"<p>{html.escape(report.best_layer_note)}</p>{table_html(report.best_layer, 'model')}")
    if report.figures:
        section("figures", "Figures", "".join(_figure(c, p) for c, p in report.figures))
    if report.details:
        section("details", "Detection and surface normals",
                "".join(f"<h3>{html.escape(t)}</h3>{table_html(d)}" for t, d in report.details))
    if report.published:
        body = [f'<p class="published">{html.escape(report.published_note)}</p>']
        body += [f"<h3>{html.escape(t)} (published)</h3>{table_html(d)}" for t, d in report.published]
        section("published", "Published numbers (not measured here)", "".join(body))
    if report.failures:
        body = [f'<div class="failed"><b>{html.escape(unit)}</b>: {html.escape(text.splitlines()[0] if text else "")}'
                f"<pre>{html.escape(text)}</pre></div>" for unit, text in report.failures]
        section("failed", f"Failed units ({len(report.failures)})", "".join(body))
    if report.costs is not None and not report.costs.empty:
        section("costs", "Cost and provenance per unit", table_html(report.costs, digits=1))
    if report.notes:
        body = []
        for title, lines in report.notes:
            body.append(f"<h3>{html.escape(title)}</h3><ul>"
                        + "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in lines if line.strip())
                        + "</ul>")
        section("notes", "Notes", "".join(body))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(report.title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(report.title)}</h1>"
            f"<p class=\"meta\">{html.escape(report.meta)}</p><nav>{''.join(nav)}</nav>"
            + "".join(sections) + f"<script>{SCRIPT}</script></body></html>\n")
