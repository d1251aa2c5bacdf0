"""The `omnimemory-learner` command: what the operator types.

main.py parses and dispatches, exits.py holds the exit statuses, output.py
prints; one module per command beside them.
"""

from __future__ import annotations
