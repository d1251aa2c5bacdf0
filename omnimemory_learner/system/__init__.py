"""The service managers: which one runs us, and how we talk to it.

`service_manager()` is the one place that decides it, from the environment
each manager sets for its services.
"""

from __future__ import annotations

import os
from typing import Mapping

SYSTEMD, LAUNCHD, NONE = "systemd", "launchd", "none"


def service_manager(env: Mapping[str, str] = os.environ) -> str:
    """'systemd', 'launchd' or 'none': who started this process."""
    if env.get("INVOCATION_ID") or env.get("NOTIFY_SOCKET"):
        return SYSTEMD
    if env.get("XPC_SERVICE_NAME", "0") != "0" or env.get("LAUNCH_JOBKEY_LABEL"):
        return LAUNCHD
    return NONE
