"""Render report sections to one self-contained HTML page and a Markdown twin."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlalign.utils.files import atomic_write_bytes

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, td:nth-child(2), td:nth-child(3) { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
p.note { color: #555; font-size: 14px; }
"""


@dataclass
class Figure:
    """A PNG plot with a file stem and a caption."""

    stem: str
    png: bytes
    caption: str


@dataclass
class Section:
    """A titled block: paragraphs, tables (header, rows) and figures, rendered in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def cell(value: Any) -> str:
    """Floats with 4 decimals, missing values as an en dash."""
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(title: str, sections: list[Section]) -> str:
    """One page, every figure embedded as a base64 PNG (no external files)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p class='note'>{html.escape(p)}</p>" for p in section.paragraphs]
        parts += [_html_table(h, r) for h, r in section.tables]
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode()
            parts.append(f"<figure><img alt='{html.escape(figure.stem)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>"
                         f"{html.escape(figure.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(title: str, sections: list[Section], figure_dir: str) -> str:
    """Markdown with figures linked from ``figure_dir`` (written by ``write_report``)."""
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += section.paragraphs
        parts += [_md_table(h, r) for h, r in section.tables]
        parts += [f"![{f.stem}]({figure_dir}/{f.stem}.png)\n\n*{f.caption}*"
                  for f in section.figures]
    return "\n\n".join(parts) + "\n"


def write_report(out_dir: Path, title: str, sections: list[Section],
                 name: str = "report") -> Path:
    """Write ``name.html``, ``name.md`` and ``name_files/*.png``; returns the HTML path."""
    figure_dir = out_dir / f"{name}_files"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for figure in section.figures:
            atomic_write_bytes(figure_dir / f"{figure.stem}.png", figure.png)
    atomic_write_bytes(out_dir / f"{name}.md",
                       to_markdown(title, sections, figure_dir.name).encode())
    path = out_dir / f"{name}.html"
    atomic_write_bytes(path, to_html(title, sections).encode())
    return path
