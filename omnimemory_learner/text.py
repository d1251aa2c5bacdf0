"""Untrusted text made safe to show, in one place.

Session ids and event types come from whatever tool wrote the memory daemon's
database; the API's answers from whatever listens on its port; paths and URLs
from the operator's configuration.  Any of them may hold a newline that would
start a forged log line, an ESC sequence that drives the reader's terminal, a
right-to-left override that shows a line reversed, or ten kilobytes.  Before
such text reaches a log line or a person's screen it goes through `shown()`.

The rule of `shown(value, limit)`:

- Every character that Unicode calls "Other" or "Separator" except the plain
  space is escaped, the way Python's `repr()` writes it.  That is exactly the
  characters for which `str.isprintable()` is false:
    - C0 controls U+0000-U+001F and DEL U+007F: `\\n`, `\\r`, `\\t`, else
      `\\x00` .. `\\x1f`, `\\x7f` (so ESC shows as `\\x1b`);
    - C1 controls U+0080-U+009F: `\\x80` .. `\\x9f`;
    - the line and paragraph separators U+2028, U+2029: `\\u2028`, `\\u2029`;
    - format characters (Cf), among them the bidirectional embeddings,
      overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks
      U+200E, U+200F, U+061C, zero-width characters U+200B-U+200D, U+2060 and
      the byte order mark U+FEFF, soft hyphen U+00AD, tag characters: `\\uXXXX`
      or `\\UXXXXXXXX`;
    - spaces other than U+0020 (no-break, ideographic...), private-use and
      unassigned code points, and lone surrogates (which UTF-8 cannot even
      encode): `\\xXX`, `\\uXXXX` or `\\UXXXXXXXX`.
- The backslash itself is escaped as `\\\\`.  With that, every escape starts
  with a backslash that can only have come from the rule, so the shown form
  is read back one way only: two different values (below the cut) never
  show the same.  `codecs.decode(shown.encode("ascii", "backslashreplace"),
  "unicode_escape")` gives the original back.
- Everything else (letters of any script, digits, punctuation, symbols,
  emoji) is shown as it is.
- A value longer than `limit` characters is cut to its first `limit`
  characters, escaped as above, followed by `...[N more characters]`, which
  says how much was left out.  The mark holds no backslash, so it cannot be
  mistaken for, or forged by, escaped text: a shown form ends in the mark
  only when the value was cut.

The shown form therefore holds no control character, no line break and no
bidirectional control, whatever the value.  `limit` counts characters of the
value, so the shown form of a cut value is at most 10 * limit characters plus
the mark (every character escaped as `\\UXXXXXXXX`).

`printable_lines(text)` is a net under text we compose ourselves (the CLI's
multi-line reports, whose untrusted parts already went through `shown()`): it
keeps line breaks and backslashes and escapes every other character
`shown()` escapes.  It is not a substitute for `shown()` (a value's own
newline would pass), only a guarantee that no control character reaches the
terminal.

Only what is shown is escaped: the request body sent to the API, the state
store and every `--json` output keep the exact text.
"""

from __future__ import annotations

from typing import Dict

LIMIT = 1000
_SHORT_ESCAPES: Dict[str, str] = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _kept(char: str) -> bool:
    return char == " " or (char.isprintable() and char != "\\")


def shown(value: object, limit: int = LIMIT) -> str:
    """`value` (its str()) as it may be shown in a log line or on a terminal."""
    text = value if isinstance(value, str) else str(value)
    left_out = len(text) - limit
    if left_out > 0:
        text = text[:limit]
    if not (text.isprintable() and "\\" not in text):
        text = "".join(char if _kept(char) else _escape(char) for char in text)
    if left_out > 0:
        text += f"...[{left_out} more characters]"
    return text


def printable_lines(text: str) -> str:
    """Our own multi-line text with any control character but the line break escaped."""
    if text.isprintable():
        return text
    return "".join(char if char in "\n\\ " or char.isprintable() else _escape(char) for char in text)
