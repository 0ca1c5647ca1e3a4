"""Token images: SVG cards drawn from a crew's or an agent's metadata document.

Pure functions: a document (the dict ``crew7.services.metadata`` builds, as served) and
an id in, SVG text out. A card shows only what its document says, and its art is drawn
from a hash of the kind and id alone, so every token looks distinct and the same token
always looks the same. Every string from a document is cleaned of characters XML 1.0
forbids, shortened to fit its line, and escaped: a name is text, never markup.
"""

import colorsys
import hashlib
import math
import re
import time
import unicodedata
from xml.sax.saxutils import escape

SIZE = 600
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"
ELLIPSIS = "\u2026"

# Characters XML 1.0 does not allow in a document (Char production), plus the line
# breaks and tabs a one-line label has no use for.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_SPACES = re.compile(r"\s+")


def clean(text):
    """``text`` as one line of characters XML 1.0 allows (whitespace runs made one space)."""
    text = _FORBIDDEN.sub(" ", str(text))
    return _SPACES.sub(" ", text).strip()


def _char_width(char):
    """A character's advance in ems, roughly (DejaVu Sans): wide scripts take one em."""
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 1.0
    if unicodedata.combining(char):
        return 0.0
    if char in "il.,:;'|!ftjI ":
        return 0.36
    if char.isupper() or char in "mwMW@%":
        return 0.78
    return 0.62


def text_width(text, font_size):
    """The estimated width of ``text`` in user units at ``font_size``."""
    return sum(_char_width(c) for c in text) * font_size


def fit(text, font_size, max_width):
    """``text`` cleaned, and cut with an ellipsis when it would be wider than ``max_width``."""
    text = clean(text)
    if text_width(text, font_size) <= max_width:
        return text
    room = max_width - text_width(ELLIPSIS, font_size)
    out, used = [], 0.0
    for char in text:
        used += _char_width(char) * font_size
        if used > room:
            break
        out.append(char)
    return "".join(out).rstrip() + ELLIPSIS


def _esc(text):
    return escape(text, {'"': "&quot;", "'": "&apos;"})


def _text(x, y, text, size, *, max_width, weight="normal", fill="#ffffff", anchor="start"):
    label = fit(text, size, max_width)
    return (
        f'<text x="{x}" y="{y}" font-family="{FONT}" font-size="{size}" '
        f'font-weight="{weight}" fill="{fill}" text-anchor="{anchor}">{_esc(label)}</text>'
    )


# -- generative art ------------------------------------------------------------------


def _seed(kind, ident, n=96):
    return hashlib.shake_256(f"crew7:{kind}:{ident}".encode()).digest(n)


def _colour(hue, saturation, lightness):
    r, g, b = colorsys.hls_to_rgb((hue % 360) / 360, lightness, saturation)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def palette(kind, ident):
    """Five colours from the token's hash: two for the background, three for the shapes."""
    seed = _seed(kind, ident)
    hue = seed[0] / 255 * 360
    turn = (30, 150, 180, 210)[seed[1] % 4]
    return [
        _colour(hue, 0.55, 0.22),
        _colour(hue + 40, 0.6, 0.32),
        _colour(hue + turn, 0.75, 0.58),
        _colour(hue + turn + 35, 0.8, 0.66),
        _colour(hue - 25, 0.7, 0.5),
    ]


def art(kind, ident, height=330):
    """The shapes of the token's art, as SVG elements, within ``SIZE`` x ``height``."""
    seed = _seed(kind, ident)
    colours = palette(kind, ident)[2:]
    style = seed[2] % 3
    shapes = []
    for i in range(16):
        b = seed[8 + i * 5 : 13 + i * 5]
        x = round(b[0] / 255 * SIZE)
        y = round(b[1] / 255 * height)
        r = 18 + b[2] % 70
        colour = colours[b[3] % 3]
        opacity = 0.35 + (b[4] % 50) / 100
        if style == 0 or i % 4 == 3:
            shapes.append(
                f'<circle cx="{x}" cy="{y}" r="{r}" fill="{colour}" fill-opacity="{opacity:.2f}"/>'
            )
        elif style == 1:
            angle = b[4] % 90
            shapes.append(
                f'<rect x="{x - r}" y="{y - r}" width="{2 * r}" height="{2 * r}" rx="{r // 5}" '
                f'fill="{colour}" fill-opacity="{opacity:.2f}" '
                f'transform="rotate({angle} {x} {y})"/>'
            )
        else:
            points = " ".join(
                f"{x + r * math.cos(a):.1f},{y + r * math.sin(a):.1f}"
                for a in (b[4] / 40 + k * 2 * math.pi / 3 for k in range(3))
            )
            shapes.append(
                f'<polygon points="{points}" fill="{colour}" fill-opacity="{opacity:.2f}"/>'
            )
    return "".join(shapes)


# -- cards ---------------------------------------------------------------------------


def _attributes(document):
    return {a.get("trait_type"): a.get("value") for a in document.get("attributes", [])}


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _count(value):
    return f"{int(_number(value)):,}"


def _date(value):
    if value is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(_number(value))))


def _frame(kind, ident, title, body):
    c = palette(kind, ident)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" '
        f'viewBox="0 0 {SIZE} {SIZE}" role="img">'
        f"<title>{_esc(fit(title, 10, 2000))}</title>"
        f'<defs><linearGradient id="bg" x1="0" y1="0" x2="1" y2="1">'
        f'<stop offset="0" stop-color="{c[0]}"/><stop offset="1" stop-color="{c[1]}"/>'
        f'</linearGradient><clipPath id="card"><rect width="{SIZE}" height="{SIZE}" rx="28"/>'
        f"</clipPath></defs>"
        f'<g clip-path="url(#card)"><rect width="{SIZE}" height="{SIZE}" fill="url(#bg)"/>'
        f"{art(kind, ident)}"
        f'<rect y="300" width="{SIZE}" height="{SIZE - 300}" fill="#0b0d14" fill-opacity="0.82"/>'
        f"{body}</g></svg>"
    )


def _gauge(cx, cy, rate, colour):
    r = 46
    circumference = 2 * math.pi * r
    filled = circumference * max(0.0, min(rate, 100.0)) / 100
    return (
        f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="none" stroke="#ffffff" '
        f'stroke-opacity="0.15" stroke-width="12"/>'
        f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="none" stroke="{colour}" stroke-width="12" '
        f'stroke-linecap="round" stroke-dasharray="{filled:.2f} {circumference:.2f}" '
        f'transform="rotate(-90 {cx} {cy})"/>'
        + _text(cx, cy + 8, f"{rate:.0f}%", 22, max_width=80, weight="bold", anchor="middle")
        + _text(cx, cy + 76, "success", 14, max_width=110, fill="#b8bfd0", anchor="middle")
    )


def crew_card(document, crew_id):
    """A crew's card: name, process, agents, total runs, success rate (a gauge), last run."""
    a = _attributes(document)
    name = document.get("name", "")
    accent = palette("crew", crew_id)[3]
    rate = _number(a.get("Success Rate"))
    body = (
        _text(36, 346, f"CREW #{crew_id}", 16, max_width=520, weight="bold", fill=accent)
        + _text(36, 396, name, 38, max_width=528, weight="bold")
        + _text(36, 442, f"Process: {clean(a.get('Process', ''))}", 20, max_width=380)
        + _text(36, 476, f"Agents: {_count(a.get('Agents'))}", 20, max_width=380)
        + _text(36, 510, f"Total runs: {_count(a.get('Total Runs'))}", 20, max_width=380)
        + _text(36, 552, f"Last run: {_date(a.get('Last Run'))}", 16, max_width=380, fill="#b8bfd0")
        + _gauge(500, 482, rate, accent)
    )
    return _frame("crew", crew_id, name, body)


def agent_card(document, agent_id):
    """An agent's card: name, role, LLM, number of tools and its crew's name."""
    a = _attributes(document)
    name = document.get("name", "")
    accent = palette("agent", agent_id)[3]
    body = (
        _text(36, 346, f"AGENT #{agent_id}", 16, max_width=520, weight="bold", fill=accent)
        + _text(36, 396, name, 38, max_width=528, weight="bold")
        + _text(36, 442, f"Role: {clean(a.get('Role', ''))}", 20, max_width=528)
        + _text(36, 476, f"LLM: {clean(a.get('LLM', ''))}", 20, max_width=528)
        + _text(36, 510, f"Tools: {_count(a.get('Tools'))}", 20, max_width=528)
        + _text(36, 552, f"Crew: {clean(a.get('Crew', ''))}", 18, max_width=528, fill="#b8bfd0")
    )
    return _frame("agent", agent_id, name, body)


def _lines(text, font_size, max_width, count):
    """``text`` wrapped at spaces into at most ``count`` lines of ``max_width``, the last
    one cut with an ellipsis when the text is longer."""
    words, lines = clean(text).split(" "), []
    while words and len(lines) < count:
        line = words.pop(0)
        while words and text_width(f"{line} {words[0]}", font_size) <= max_width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines[-1] = f"{lines[-1]} {' '.join(words)}"
    return [fit(line, font_size, max_width) for line in lines]


def collection_card(document, collection):
    """A collection's card (its contract-level ``image``): name and description."""
    name = document.get("name", "")
    accent = palette("collection", collection)[3]
    body = _text(36, 346, "COLLECTION", 16, max_width=520, weight="bold", fill=accent)
    body += _text(36, 396, name, 38, max_width=528, weight="bold")
    for i, line in enumerate(_lines(document.get("description", ""), 20, 528, 5)):
        body += _text(36, 442 + 30 * i, line, 20, max_width=528, fill="#d8dce6")
    return _frame("collection", collection, name, body)
