"""The pure core: mapping, sessions, outcome.  No I/O, no threads, no clock.

Modules here import only each other and the standard library; a test
(tests/test_layout.py) holds that.
"""

from __future__ import annotations
