"""report.html: one self-contained page (no external resources): the table, the paper's numbers
beside it, the verdicts, the figures as base64 data URIs, the paper's numbers with their
protocol, and the skipped runs."""

import base64
import html
from pathlib import Path

from orchestrator.report import paper, text

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
.holds { color: #176317; } .fails { color: #a11; } .undecided, .untestable { color: #886600; }
img { max-width: 100%; }
"""


def render(report: dict, figures: list[Path], title: str) -> str:
    sections = [
        f"<h1>{_e(title)}</h1>",
        "<h2>Results</h2>",
        _table(text.HEADERS, [text.cells(row) for row in report["rows"]]),
        f"<p>{_e(text.LEGEND)}</p>",
        _list("Against the paper", text.paper_notes(report["rows"])),
        _verdicts(report["verdicts"]),
        *(_figure(path) for path in figures),
        "<h2>The paper's numbers</h2>",
        _paper_table(),
        _list("Skipped runs", text.skipped_lines(report["skipped"])),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _e(value) -> str:
    return html.escape(str(value))


def _table(headers, rows) -> str:
    head = "".join(f"<th>{_e(h).replace(chr(10), '<br>')}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _list(title: str, lines: list[str]) -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return f"<h2>{_e(title)}</h2><ul>{items}</ul>"


def _verdicts(verdicts: list[dict]) -> str:
    if not verdicts:
        return ""
    css = {"holds": "holds", "does not hold": "fails", "undecided": "undecided", "not testable": "untestable"}
    items = []
    for v in verdicts:
        said = v["verdict"]
        items.append(f'<li><b class="{css[said]}">{said}</b>: {_e(v["finding"])}: {_e(v["evidence"])}</li>')
    return f"<h2>Verdicts</h2><ul>{''.join(items)}</ul>"


def _figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<h2>{_e(Path(path).stem)}</h2><img alt="{_e(Path(path).name)}" src="data:image/png;base64,{data}">'


def _paper_table() -> str:
    headers = ("table", "model", "dataset", "split", "protocol", "statistic", "top-1 %", "top-5 %")
    rows = [
        (
            r.table,
            r.model,
            r.dataset,
            r.split,
            r.protocol,
            r.statistic + (f" ({r.mean_std[0]} ± {r.mean_std[1]} over {r.mean_std[2]})" if r.mean_std else ""),
            "-" if r.top1_error is None else f"{r.top1_error:.2f}",
            "-" if r.top5_error is None else f"{r.top5_error:.2f}",
        )
        for r in paper.RESULTS
    ]
    return _table(headers, rows)
