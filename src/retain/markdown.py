"""Markdown from data: text that came from users' files, made safe to put in a table.

Markdown passes raw HTML through to most renderers, so text from data is HTML-escaped,
and table cells lose their pipes and line breaks. The report's summary and the model
card both write it.
"""

from __future__ import annotations

import html
from typing import Any


def cell(value: Any, limit: int = 160) -> str:
    """Returns ``value`` as safe Markdown table-cell text: escaped, one line, no pipes."""
    text = " ".join(str("" if value is None else value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # Outside tags, <, > and & are all HTML needs escaped; quotes stay readable. Escaped
    # brackets make no link or image of a label such as ![x](https://...) or [x](javascript:...).
    escaped = html.escape(text, quote=False)
    for char in "\\|`[]":
        escaped = escaped.replace(char, "\\" + char)
    return escaped
