"""The Debian package, installed system-wide (.ci/run does `apt-get install ./…deb` first).

Started with `systemctl --user start omnimemory-learner` under a real user
manager (test_systemd's fixture), it learns each session exactly once.  Runs
only when OMNIMEMORY_LEARNER_DEB_INSTALLED=1 says the package is installed.
"""

import os
import time
from pathlib import Path

import pytest
from helpers import RecordingAPI, create_db, insert_events
from test_systemd import UNIT, manager, session_events, write_config  # noqa: F401 - manager is a fixture

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(
        os.environ.get("OMNIMEMORY_LEARNER_DEB_INSTALLED") != "1",
        reason="the Debian package is not installed (.ci/run installs it)",
    ),
]
PACKAGED_UNIT = Path("/usr/lib/systemd/user") / UNIT


def test_the_packaged_unit_learns_each_session_once(manager, tmp_path):  # noqa: F811
    um = manager
    assert PACKAGED_UNIT.is_file()
    assert "ExecStart=/usr/bin/omnimemory-learner run" in PACKAGED_UNIT.read_text()
    # Not enabled for every user (README.Debian): the user opts in.
    assert um.systemctl("is-enabled", UNIT).stdout.strip() == "disabled"
    api = RecordingAPI().start()
    db = create_db(tmp_path / "db" / "memory_data.db")
    write_config(um, db, api.url)
    try:
        um.systemctl("start", UNIT, check=True)
        props = um.show("ActiveState", "Type", "FragmentPath", "MainPID")
        assert props["ActiveState"] == "active" and props["Type"] == "notify", props
        assert props["FragmentPath"] == str(PACKAGED_UNIT)
        # Debian's python3 and its httpx/watchdog/sdnotify, not a venv.
        cmdline = Path(f"/proc/{props['MainPID']}/cmdline").read_text().split("\0")
        assert cmdline[:2] == ["/usr/bin/python3", "/usr/bin/omnimemory-learner"], cmdline
        insert_events(db, session_events("deb-one", 4))
        insert_events(db, session_events("deb-two", 3))
        insert_events(db, session_events("deb-three", 5))
        assert api.wait_for(3, timeout=40), um.journal()[-2000:]
        time.sleep(3)  # anything sent twice would have arrived by now
        ids = [body["session_id"] for _, body in api.sessions()]
        assert sorted(ids) == ["deb-one", "deb-three", "deb-two"], ids
        um.systemctl("stop", UNIT, check=True)
        assert um.show("ExecMainStatus")["ExecMainStatus"] == "0"
    finally:
        api.stop()
