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
from typing import Iterable, Sequence, Tuple

KEY_HEX_DIGITS = 32  # 128 bits, as a uuid4's worth of randomness
_DOUBLE = struct.Struct("<d")


def session_key(session_id: str, event_types: Sequence[str], times: Iterable[float]) -> str:
    """128-bit hex key of (session id, [(event type, time), ...])."""
    digest = hashlib.sha256()
    # Length-prefixed fields: no two different sessions share an encoding.
    encoded_id = session_id.encode("utf-8", "surrogatepass")
    digest.update(len(encoded_id).to_bytes(4, "little"))
    digest.update(encoded_id)
    for event_type, time in zip(event_types, times):
        encoded_type = event_type.encode("utf-8", "surrogatepass")
        digest.update(len(encoded_type).to_bytes(4, "little"))
        digest.update(encoded_type)
        digest.update(_DOUBLE.pack(time))
    return digest.hexdigest()[:KEY_HEX_DIGITS]


def key_of_pairs(session_id: str, pairs: Sequence[Tuple[str, str]], times: Iterable[float]) -> str:
    """session_key for a session held as shared (command, event_type) pairs."""
    return session_key(session_id, [event_type for _, event_type in pairs], times)
