"""What a row's timestamp costs parsed in SQLite against in Python (issue 25's lever 1 and 2).

    python3 bench/parse_costs.py --db PATH [--rows 400000]

Per row, best of 5: the batch SELECT (batches of 1,000 by rowid) with one
more column computed by SQLite, then CPython's parses of the same
timestamps (the rows of 26 characters: `isoformat()` with microseconds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import time

BATCH = "SELECT rowid, timestamp, event_type, session_id{extra} FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?"
SHAPE = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'"
MAPPED = (
    "file_open",
    "file_save",
    "file_create",
    "file_delete",
    "file_modify",
    "process_start",
    "process_end",
    "editor_open",
    "editor_close",
    "code_edit",
    "test_run",
    "build_start",
    "git_commit",
    "git_push",
    "git_pull",
)
TYPES = ", ".join(f"'{name}'" for name in MAPPED)
# events.py's batch SELECT at ee6319d: each field too long to be an event's replaced in SQL.
GUARDED = (
    "SELECT rowid, CASE WHEN length(timestamp) > 4096 THEN NULL ELSE timestamp END,"
    " CASE WHEN length(event_type) > 4096 THEN NULL ELSE event_type END,"
    " CASE WHEN length(CAST(session_id AS BLOB)) > 2048 THEN 'x' ELSE session_id END{extra}"
    " FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
SQL_COLUMNS = {
    "four columns": BATCH.format(extra=""),
    "the reader's SELECT (guards)": GUARDED.format(extra=""),
    "+ GLOB of the shape": BATCH.format(extra=f", timestamp GLOB {SHAPE}"),
    "+ unixepoch(first 19)": BATCH.format(extra=", unixepoch(substr(timestamp, 1, 19))"),
    "+ strftime('%s')": BATCH.format(extra=", strftime('%s', substr(timestamp, 1, 19))"),
    "+ the whole expression": BATCH.format(
        extra=f", CASE WHEN timestamp GLOB {SHAPE} AND timestamp >= '1970' AND timestamp < '2500'"
        " THEN (unixepoch(substr(timestamp, 1, 19)) - 0) + CAST(substr(timestamp, 21) AS INTEGER) / 1e6 END"
    ),
    "guards, unmapped types' time NULL": GUARDED.replace(
        "CASE WHEN length(timestamp)", f"CASE WHEN event_type NOT IN ({TYPES}) THEN NULL WHEN length(timestamp)"
    ).format(extra=""),
}


def best_of(work, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def sql_costs(connection: sqlite3.Connection, rows: int) -> None:
    for name, sql in SQL_COLUMNS.items():

        def read(sql: str = sql) -> None:
            after, count = 0, 0
            while count < rows:
                batch = connection.execute(sql, (after, 1000)).fetchall()
                if not batch:
                    break
                after, count = batch[-1][0], count + len(batch)

        print(f"{name:32} {best_of(read) / rows * 1e9:6.0f} ns a row")


def python_costs(connection: sqlite3.Connection, rows: int) -> None:
    texts = [
        row[0]
        for row in connection.execute("SELECT timestamp FROM events ORDER BY rowid LIMIT ?", (rows,))
        if type(row[0]) is str and len(row[0]) == 26
    ]
    parse = dt.datetime.fromisoformat
    epoch = dt.datetime(1970, 1, 1)
    hours = {text[:13]: int(parse(text[:13] + ":00:00").timestamp()) for text in texts}

    def parsed() -> None:
        for text in texts:
            parse(text)

    def timestamp() -> None:
        for text in texts:
            parse(text).timestamp()

    def by_hour() -> None:
        for text in texts:
            value = parse(text)
            (hours[text[:13]] + value.minute * 60 + value.second) + value.microsecond / 1e6

    def by_delta() -> None:
        for text in texts:
            delta = parse(text) - epoch
            (delta.days * 86400 + delta.seconds) + delta.microseconds / 1e6

    for name, work in (
        ("fromisoformat", parsed),
        ("fromisoformat().timestamp()", timestamp),
        ("hour cache + fields", by_hour),
        ("timedelta from the epoch", by_delta),
    ):
        print(f"{name:32} {best_of(work) / len(texts) * 1e9:6.0f} ns a timestamp")
    differ = 0
    for text in texts:
        value = parse(text)
        if (hours[text[:13]] + value.minute * 60 + value.second) + value.microsecond / 1e6 != value.timestamp():
            differ += 1
    print(f"hour cache != timestamp(): {differ} of {len(texts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--rows", type=int, default=400_000)
    arguments = parser.parse_args()
    connection = sqlite3.connect(f"file:{arguments.db}?mode=ro&immutable=1", uri=True)
    print(f"SQLite {sqlite3.sqlite_version}")
    sql_costs(connection, arguments.rows)
    python_costs(connection, arguments.rows)


if __name__ == "__main__":
    main()
