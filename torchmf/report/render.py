"""Markdown -> a self-contained HTML page for ``torchmf report``.

With Python-Markdown installed (the ``report`` extra: ``pip install "torchmf[report]"``) the page is
rendered by it (fenced code, tables); without it a small built-in renderer covers what the report
writes: headings, paragraphs, ``-`` bullet lists, images, fenced code, inline code, ``**bold**``
and ``_emphasis_``. Either way nothing reaches the page as raw markdown, and all text is escaped.
"""
from __future__ import annotations

import html
import re

__all__ = ["markdown_to_html", "STYLE"]

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #222; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; }
img { max-width: 100%; }
li { margin: .2rem 0; }
"""

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])_(.+?)_(?![\w*])")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$")


def markdown_to_html(text: str, title: str = "torchmf report", use_library: bool = True) -> str:
    """A complete HTML document for ``text`` (markdown); ``use_library=False`` forces the built-in renderer."""
    body = None
    if use_library:
        try:
            import markdown
        except ImportError:
            markdown = None
        if markdown is not None:
            # code spans and fenced blocks are escaped by the renderer; the rest is the report's own text
            body = markdown.markdown(_separate_lists(text), extensions=["fenced_code", "tables"])
    if body is None:
        body = _render(text)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _separate_lists(text: str) -> str:
    """A blank line before a list that follows a paragraph line (Python-Markdown needs it; the report's
    sections write ``"...:\n- item"``), outside fenced code."""
    lines, in_code, previous = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        bullet = line.lstrip().startswith(("- ", "* "))
        if not in_code and bullet and previous.strip() and not previous.lstrip().startswith(("- ", "* ")):
            lines.append("")
        lines.append(line)
        previous = line if not in_code else ""
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then inline code (its content untouched), bold and emphasis."""
    pieces = []
    for index, part in enumerate(_INLINE_CODE.split(text)):
        if index % 2:
            pieces.append(f"<code>{html.escape(part)}</code>")
        else:
            part = html.escape(part)
            part = _BOLD.sub(r"<strong>\1</strong>", part)
            pieces.append(_EMPHASIS.sub(r"<em>\1</em>", part))
    return "".join(pieces)


def _render(text: str) -> str:
    body, paragraph, in_list, in_code = [], [], False, False

    def flush():
        nonlocal in_list
        if paragraph:
            body.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if in_list:
            body.append("</ul>")
            in_list = False

    for line in text.splitlines():
        if line.startswith("```"):
            if not in_code:
                flush()
            body.append("</code></pre>" if in_code else "<pre><code>")
            in_code = not in_code
        elif in_code:
            body.append(html.escape(line))
        elif not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")), 6)
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif _IMAGE.match(line):
            flush()
            alt, source = _IMAGE.match(line).groups()
            body.append(f'<p><img src="{html.escape(source)}" alt="{html.escape(alt)}"></p>')
        elif line.lstrip().startswith(("- ", "* ")):
            if paragraph:
                body.append(f"<p>{_inline(' '.join(paragraph))}</p>")
                paragraph.clear()
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line.lstrip()[2:])}</li>")
        elif in_list and line.startswith("  "):  # continuation of a bullet
            body[-1] = body[-1][:-len("</li>")] + " " + _inline(line.strip()) + "</li>"
        else:
            if in_list:
                flush()
            paragraph.append(line.strip())
    flush()
    if in_code:
        body.append("</code></pre>")
    return "\n".join(body)
