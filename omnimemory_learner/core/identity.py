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
from typing import Dict, List, Sequence, Tuple

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


class _PairPrefixed(Dict[Tuple[str, str], bytes]):
    """(command, event type) -> its event type's length-prefixed UTF-8 (pairs are shared; bounded)."""

    def __missing__(self, pair: Tuple[str, str]) -> bytes:
        if len(self) > 4096:
            self.clear()
        value = self[pair] = _prefixed[pair[1]]
        return value


_pair_prefixed = _PairPrefixed()


def session_key(session_id: str, event_types: Sequence[str], times: Sequence[float]) -> str:
    """128-bit hex key of (session id, [(event type, time), ...]).

    Length-prefixed fields (no two different sessions share an encoding):
    the id, then per event its type and its time as a little-endian double.
    """
    return _key(session_id, list(map(_prefixed.__getitem__, event_types)), times)


def key_of_pairs(session_id: str, pairs: Sequence[Tuple[str, str]], times: Sequence[float]) -> str:
    """session_key for a session held as shared (command, event_type) pairs."""
    return _key(session_id, list(map(_pair_prefixed.__getitem__, pairs)), times)


def _key(session_id: str, prefixes: List[bytes], times: Sequence[float]) -> str:
    # One buffer, hashed once: this runs for every closed session of a catch-up.
    count = min(len(prefixes), len(times))
    parts: List[bytes] = [b""] * (2 * count)
    parts[::2] = prefixes[:count]
    parts[1::2] = map(_pack_double, times[:count])
    encoded_id = session_id.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(len(encoded_id).to_bytes(4, "little"))
    digest.update(encoded_id)
    digest.update(b"".join(parts))
    return digest.hexdigest()[:KEY_HEX_DIGITS]
