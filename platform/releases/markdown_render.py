"""A tiny, safe Markdown renderer for model cards: headings, paragraphs, lists, tables, code, `code`, **bold**.

Everything is HTML-escaped before any markup is added, so a card can never inject HTML or scripts.
Links are shown as text on purpose: a card is data, not a place for navigation we have not checked.
"""

from __future__ import annotations

import re

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

_BOLD = re.compile(r"\*\*(.+?)\*\*")


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """(simple `key: value` pairs and list items joined by commas, body)."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---\n", 4)
    if end < 0:
        return {}, text
    meta: dict[str, str] = {}
    key = ""
    for line in text[4:end].splitlines():
        if line[:1].isspace():
            continue  # nested YAML (model-index's results): listed in the card's own tables, not as a meta line
        if line.startswith("- ") and key:
            item = line[2:].strip()
            if ": " not in item:  # a list of scalars (tags); a list of mappings is nested YAML too
                meta[key] = ", ".join(filter(None, [meta[key], item]))
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            meta[key] = value.strip()
    return {k: v for k, v in meta.items() if v}, text[end + 5 :]


def _inline(text: str) -> str:
    parts = text.split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside backticks (an unclosed one is left as it was written)
            out.append(f"<code>{escape(part)}</code>" if i < len(parts) - 1 else "`" + escape(part))
        else:
            out.append(_BOLD.sub(r"<strong>\1</strong>", str(escape(part))))
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def render_markdown(text: str) -> SafeString:
    lines = text.splitlines()
    html: list[str] = []
    paragraph: list[str] = []
    i = 0

    def flush() -> None:
        if paragraph:
            html.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            lang = stripped[3:].strip()
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            cls = f' class="language-{escape(lang)}"' if re.fullmatch(r"[\w+-]+", lang) else ""
            html.append(f"<pre><code{cls}>{escape(chr(10).join(body))}</code></pre>")
        elif heading := re.match(r"(#{1,6})\s+(.*)", stripped):
            flush()
            level = len(heading.group(1))
            html.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|?[\s:|-]+\|?", lines[i + 1].strip()):
            flush()
            header = "".join(f"<th>{_inline(c)}</th>" for c in _cells(line))
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            html.append(f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
            continue
        elif re.match(r"[-*]\s+", stripped):
            flush()
            items = []
            while i < len(lines) and re.match(r"[-*]\s+", lines[i].strip()):
                item = re.sub(r"^[-*]\s+", "", lines[i].strip())
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            html.append(f"<ul>{''.join(items)}</ul>")
            continue
        elif not stripped:
            flush()
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return mark_safe("\n".join(html))  # every piece of text above went through escape()
