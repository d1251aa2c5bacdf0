"""A session's identity is its content (pure).

The key of a closed session is derived from what it is, not from where it was
read: its session id and its events' types and times, in order.  Rowids are
left out on purpose: a copy of the database keeps them, a wipe reuses them,
so they say nothing about which session this is.  Any path that reads the
same session twice (a restart's replay, a replaced or restored database, a
backfill) computes the same key; it is the request's Idempotency-Key and the
delivered ledger's index.
"""

from __future__ import annotations

import hashlib
import struct
from itertools import chain
from operator import itemgetter
from typing import Dict, Iterable, List, Sequence, Tuple

KEY_HEX_DIGITS = 32  # 128 bits, as a uuid4's worth of randomness
_pack_double = struct.Struct("<d").pack


class _Prefixed(Dict[str, bytes]):
    """event type -> its length-prefixed UTF-8, made once per type (bounded)."""

    def __missing__(self, text: str) -> bytes:
        if len(self) > 4096:
            self.clear()
        encoded = text.encode("utf-8", "surrogatepass")
        value = self[text] = len(encoded).to_bytes(4, "little") + encoded
        return value


_prefixed = _Prefixed()


def session_key(session_id: str, event_types: Sequence[str], times: Iterable[float]) -> str:
    """128-bit hex key of (session id, [(event type, time), ...]).

    Length-prefixed fields (no two different sessions share an encoding):
    the id, then per event its type and its time as a little-endian double.
    Built as one buffer and hashed once: this runs for every closed session
    of a catch-up.
    """
    encoded_id = session_id.encode("utf-8", "surrogatepass")
    parts: List[bytes] = [len(encoded_id).to_bytes(4, "little"), encoded_id]
    parts.extend(chain.from_iterable(zip(map(_prefixed.__getitem__, event_types), map(_pack_double, times))))
    return hashlib.sha256(b"".join(parts)).hexdigest()[:KEY_HEX_DIGITS]


def key_of_pairs(session_id: str, pairs: Sequence[Tuple[str, str]], times: Iterable[float]) -> str:
    """session_key for a session held as shared (command, event_type) pairs."""
    return session_key(session_id, list(map(itemgetter(1), pairs)), times)
