"""Exit statuses of every `omnimemory-learner` command, in one place.

They follow sysexits(3) and the LSB's init-script statuses; the man page's
EXIT STATUS section lists the same set.  This module imports nothing of the
package, so any command can use it without an import circle.

    0   EX_OK           success; `status`: the service is running
    1   EX_FAILURE      a check failed (`doctor`), nothing matched (`outbox retry/drop/list ID`)
    2   EX_USAGE        the command line is wrong (argparse's own status)
    3   EX_NOT_RUNNING  `status`: the service is not running (LSB)
    4   EX_NO_STATE     `status`/`outbox`: no state store to read (LSB: status unknown)
    69  EX_UNAVAILABLE  the database or the API is not available (`backfill`)
    70  EX_SOFTWARE     an internal error
    73  EX_CANTCREAT    the state directory cannot be written
    75  EX_TEMPFAIL     another instance holds the lock (by hand; under a service manager it waits)
    78  EX_CONFIG       the configuration is invalid
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_NOT_RUNNING = 3
EX_NO_STATE = 4
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78
