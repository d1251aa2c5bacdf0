"""omnimemory-learner: learns workflow patterns from OmniMemory activity events."""

from __future__ import annotations

__version__ = "0.1.0"
