"""Everything the learner keeps under state_dir: state store, lock, status snapshot."""

from __future__ import annotations
