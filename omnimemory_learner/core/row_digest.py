"""An events row's fingerprint as a digest of fixed size, whatever its fields hold (pure).

database_identity.py keeps the fingerprint of the table's first row and of the
last row read, and compares them at every drain: a fingerprint that grew with
its row (a 50 MB session id) would be fetched, compared and written that often.

A row is (rowid, timestamp, event_type, session_id).  A text or blob field of
more than LONG_FIELD characters (or bytes) is stood for by its type alone, a
`Summary`: the reader never has to fetch it to compare it, and a rewrite that
keeps every other field of the row and only changes what such a field holds
goes unseen.  The digest says which fields it summarised (its mask), so that
the reader fetches the same ones whole the next time.

The reader can tell "too long" without fetching from the field's size in bytes:
a field of more than 4 * LONG_FIELD bytes holds more than LONG_FIELD characters
however it is decoded (a UTF-8 character is at most 4 bytes, and a byte that is
not UTF-8 becomes 4 characters), so SUMMARY_BYTES bounds what it fetches and the
rule here, applied to what it fetched, decides the same as for the row read.

The form of 0.x before this one was the repr of the row: `is_digest` tells the
two apart (a repr starts with "(").
"""

from __future__ import annotations

import hashlib
import struct
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

LONG_FIELD = 4096
SUMMARY_BYTES = 4 * LONG_FIELD
_PREFIX = "d1:"
_FIELDS = 3  # timestamp, event_type, session_id
_DOUBLE = struct.Struct("<d")

# Which of a row's three fields a digest summarised (True) or holds whole.
Mask = Tuple[bool, ...]
# A row no digest has masked yet: each field read unless over SUMMARY_BYTES.
UNMASKED: Mask = (False,) * _FIELDS


class Fingerprinted(NamedTuple):
    """What EventReader.fingerprint_rows found."""

    first: Optional[tuple]  # the table's first row: (rowid,), or the whole row when asked
    found: Dict[int, tuple]  # the rows asked for by rowid that are there
    sequence: Optional[int]  # AUTOINCREMENT's largest rowid ever given (sqlite_sequence), None without


class Summary(NamedTuple):
    """A field too long to fetch, stood for by its SQLite type ("text", "blob")."""

    kind: str


def field_of(value: object) -> object:
    """The value as the digest takes it: a Summary for a text or blob over LONG_FIELD."""
    if isinstance(value, (str, bytes)) and len(value) > LONG_FIELD:
        return Summary("text" if isinstance(value, str) else "blob")
    return value


def _encode(value: object) -> bytes:
    # A type tag and a length before every payload: no two rows share an encoding.
    if value is None:
        tag, payload = b"n", b""
    elif isinstance(value, Summary):
        tag, payload = b"s", value.kind.encode()
    elif isinstance(value, bool) or not isinstance(value, (int, float, str, bytes)):
        tag, payload = b"?", repr(value).encode("utf-8", "backslashreplace")
    elif isinstance(value, int):
        tag, payload = b"i", str(value).encode()
    elif isinstance(value, float):
        tag, payload = b"r", _DOUBLE.pack(value)
    elif isinstance(value, str):
        tag, payload = b"t", value.encode("utf-8", "surrogatepass")
    else:
        tag, payload = b"b", value
    return tag + len(payload).to_bytes(8, "little") + payload


def digest(row: Sequence[object]) -> str:
    """The fingerprint of (rowid, timestamp, event_type, session_id): "d1:<mask>:<sha256 hex>".

    The rowid is left out (it is kept beside the digest): a row renumbered
    by a VACUUM has the digest it had.
    """
    fields = [field_of(value) for value in row[1 : 1 + _FIELDS]]
    hasher = hashlib.sha256()
    for field in fields:
        hasher.update(_encode(field))
    mask = "".join("L" if isinstance(field, Summary) else "." for field in fields)
    return f"{_PREFIX}{mask}:{hasher.hexdigest()}"


def is_digest(text: object) -> bool:
    return isinstance(text, str) and text.startswith(_PREFIX)


def matches(row: Sequence[object], text: str) -> bool:
    """Whether a row read now is the one fingerprinted as `text` (a digest, or the older form: the row's repr)."""
    return digest(row) == text if is_digest(text) else repr(tuple(row)) == text


def mask_of(text: str) -> Optional[Mask]:
    """The fields a digest summarised; None for a fingerprint of the older form (the row's repr)."""
    if not is_digest(text):
        return None
    mask = text[len(_PREFIX) : len(_PREFIX) + _FIELDS]
    return tuple(char == "L" for char in mask) if len(mask) == _FIELDS else UNMASKED


_COLUMNS = ("timestamp", "event_type", "session_id")


def select_sql(mask: Optional[Mask], where: str = "rowid = ?") -> str:
    """The reader's query for one row by rowid (its one parameter), as a digest of `mask` compares it.

    `where`: another condition (and order), for rows looked for by digest.

    None: the row whole, as the older form was made.  Otherwise each field as
    (typeof, value): the value NULL where the mask summarised it or it is over
    SUMMARY_BYTES.  typeof() reads no content; length(CAST ...) stays inside
    SQLite, so no huge field leaves it.
    """
    if mask is None:
        return f"SELECT rowid, {', '.join(_COLUMNS)} FROM events WHERE {where}"
    fields = [
        f"typeof({column}), NULL"
        if summarised
        else f"typeof({column}), CASE WHEN typeof({column}) IN ('text', 'blob') AND"
        f" length(CAST({column} AS BLOB)) > {SUMMARY_BYTES} THEN NULL ELSE {column} END"
        for column, summarised in zip(_COLUMNS, mask)
    ]
    return f"SELECT rowid, {', '.join(fields)} FROM events WHERE {where}"


def as_row(found: Sequence[object], mask: Optional[Mask]) -> tuple:
    """(rowid, timestamp, event_type, session_id) from select_sql's answer, a Summary for what it left out."""
    if mask is None:
        return tuple(found)
    fields = []
    for index, summarised in enumerate(mask):
        kind, value = found[1 + 2 * index], found[2 + 2 * index]
        left_out = summarised or (value is None and kind != "null")
        fields.append(Summary(str(kind)) if left_out else value)
    return (found[0], *fields)
