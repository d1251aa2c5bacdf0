"""Make the README's picture of a report's graph: generated activity with known workflows,
learned by the real learner from a real SQLite file, then `omnimemory-learner report --svg`.

    python3 bench/example_report.py docs/workflow-graph.svg

Needs Graphviz's dot.  Runs a local recording API on 127.0.0.1 for the learner to send to.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import RecordingAPI, create_db, insert_events, learner_env

WORKFLOWS = [  # (weight, event types)
    (6, ["git_pull", "file_open", "code_edit", "code_edit", "file_save", "test_run", "git_commit", "git_push"]),
    (4, ["file_open", "code_edit", "test_run", "code_edit", "test_run", "file_save", "git_commit"]),
    (2, ["file_open", "code_edit", "build_start", "process_start", "process_end"]),
    (2, ["file_create", "code_edit", "test_run", "code_edit", "file_delete"]),
]


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "workflow-graph.svg").resolve()
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        db = create_db(work / "events.db")
        rows = []
        start = time.time() - 7 * 86400
        for number in range(300):
            types = rng.choices([w for _, w in WORKFLOWS], weights=[w for w, _ in WORKFLOWS])[0]
            for index, event_type in enumerate(types):
                when = start + number * 1800 + index * rng.uniform(5, 60)
                rows.append((time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when)), event_type, f"s{number}"))
        insert_events(db, rows)
        api = RecordingAPI().start()
        try:
            env = learner_env(work, api.url, db, OMNIMEMORY_LEARNER_FOLD_REPEATS="true")
            run = [sys.executable, "-m", "omnimemory_learner"]
            subprocess.run(
                [*run, "backfill", "--until-delivered-timeout", "60"],
                env=env,
                check=True,
                cwd=str(ROOT),
                capture_output=True,
            )
            report = subprocess.run(
                [*run, "report", "--svg", str(target)], env=env, cwd=str(ROOT), capture_output=True, text=True
            )
        finally:
            api.stop()
    sys.stdout.write(report.stdout)
    sys.stderr.write(report.stderr)
    return report.returncode


if __name__ == "__main__":
    sys.exit(main())
