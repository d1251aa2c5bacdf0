"""From database rows to the outbox: read, map, group, commit.

Shared by the service loop and `backfill`.  Owns the read position, the
session tracker and the state store; knows nothing of signals, watching,
delivery or the service manager.  Whoever runs it hands it a callback,
`on_outbox`, called after a commit put new sessions in the outbox (the loop
and `backfill` wake their delivery thread with it), and `on_unsent`, handed
the sessions a commit settled without sending (too short, below
min_quality) for the history (their delivery thread records them with the
rest; without it the pipeline records them itself).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import time
from typing import Callable, Dict, List, Optional

from .config import Config
from .core.fates import CloseReason, Unavailability
from .core.mapping import command_pairs
from .core.sessions import ClosedSession, SessionTracker, drop_replayed
from .events import EventReader, LocalTimeContext, Unavailable, file_identity, validate_rows
from .storage.history import HistoryStore, unsent_entry
from .storage.state import StateError, StateStore

log = logging.getLogger(__name__)
_compact_json = json.JSONEncoder(separators=(",", ":")).encode

# During a long catch-up, commit at least this often so delivery can start
# and a crash loses little work.
COMMIT_EVERY_SECONDS = 1.0
# ... and once this many closed sessions wait: they are held in memory until
# the commit, so a fast catch-up (a backlog with many ids) stays small.
COMMIT_EVERY_SESSIONS = 5000
# A position that moved with no session closed is committed at most this
# often: nothing is lost by waiting (a restart re-reads a few events), and an
# fsync per live event would put disk latency on every event's path.
POSITION_COMMIT_SECONDS = 5.0
# Sessions evicted by the open-session cap are logged at most this often.
EVICTION_LOG_SECONDS = 60.0


class Pipeline:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        on_outbox: Optional[Callable[[], None]] = None,
        on_unsent: Optional[Callable[[List[ClosedSession]], bool]] = None,
    ):
        self.config = config
        self.on_outbox = on_outbox
        self.on_unsent = on_unsent
        self.clock = clock
        self.state = StateStore(config.state_dir)
        self.reader = EventReader(config.db_path)
        self.tracker = self._new_tracker(config)
        self.pairs = command_pairs(config.event_map)
        position = self.state.position()
        self.read_after = position.resume_after
        self.replay_until = position.replay_until
        self.db_identity = position.db_identity
        replaying = self.replay_until > self.read_after
        self.closed_ranges = self.state.closed_ranges(position.resume_after) if replaying else {}
        self._closed: List[ClosedSession] = []
        self._counters: Dict[str, int] = {}
        self._dirty = False
        self._last_commit = clock()
        self.commit_failing: Optional[str] = None
        self.resume_reading = False
        self._retry_commit_at = 0.0
        self.unavailable: Optional[Unavailable] = None
        self.last_event_time: Optional[float] = None
        self.head = 0
        self.caught_up = False
        self.events_this_run = 0
        # The previous event's time, for resolving a naive local time in the
        # hour a DST fall-back repeats (validate_rows); carried across batches
        # so batch boundaries do not change it.
        self.time_context = LocalTimeContext()
        self._evictions_unlogged = 0
        self._evictions_logged_at = float("-inf")
        # The ledger, asked while a rewritten database is read again; and where
        # sessions settled without being sent go when there is no on_unsent.
        self.history = HistoryStore(config.state_dir)
        # After a rewritten database is read again from its start: sessions
        # with rows up to this rowid may have been delivered before (None: no
        # rewrite being read again).  In state.db, so a restart keeps it.
        self.rewrite_head = self.state.rewrite_head()
        self._ledger_skip_said = False
        # The database's identity is its rows: [rowid, repr of the row] of the
        # table's first row and of the last row read (see _check_replaced).
        fingerprint = self.state.fingerprint() or {}
        self.first_row: Optional[list] = fingerprint.get("first")
        self.last_row: Optional[list] = fingerprint.get("last")
        self._horizon_skip_said = False

    @staticmethod
    def _new_tracker(config: Config) -> SessionTracker:
        return SessionTracker(
            config.idle_seconds,
            config.min_commands_for_learning,
            config.max_session_commands,
            config.max_open_sessions,
            config.close_on,
            config.fold_repeats,
        )

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration.  Open sessions keep their events."""
        if config.db_path != self.config.db_path:
            log.warning("db_path changed to %s; a restart applies it", config.db_path)
        if config.state_dir != self.config.state_dir:
            log.warning("state_dir changed to %s; a restart applies it", config.state_dir)
        tracker = self.tracker
        tracker.idle_seconds = config.idle_seconds
        tracker.min_commands = config.min_commands_for_learning
        tracker.max_commands = config.max_session_commands
        tracker.max_open = config.max_open_sessions
        tracker.close_on = frozenset(config.close_on)
        tracker.fold_repeats = config.fold_repeats
        self.pairs = command_pairs(config.event_map)
        self.config = dataclasses.replace(config, db_path=self.config.db_path, state_dir=self.config.state_dir)

    # -- reading ---------------------------------------------------------------

    def drain(self, should_stop=lambda: False, between_batches=None) -> bool:
        """Read batches until caught up; False if the database could not be read.

        Sessions are cut the same way however the rows come (sessions.py);
        closing by processing time waits until everything is read (close_idle).
        """
        batch_size = self.config.batch_size
        first = True
        while not should_stop():
            if self.commit_failing:
                return False
            try:
                if first:
                    self._check_replaced()
                rows = self.reader.read_batch(self.read_after, batch_size)
                if not rows and self.read_after > 0 and self.reader.head() < self.read_after:
                    self._database_replaced(f"its newest rowid is below our position {self.read_after}")
                    continue
            except Unavailable as problem:
                self._note_unavailable(problem)
                return False
            self._note_available()
            first = False
            if rows:
                self._process(rows)
            if len(rows) < batch_size:
                self.caught_up = True
                break
            self.caught_up = False
            if between_batches is not None:
                between_batches()
            if self.clock() - self._last_commit >= COMMIT_EVERY_SECONDS or len(self._closed) >= COMMIT_EVERY_SESSIONS:
                self.commit()
        self.commit_due()
        return True

    def _process(self, rows: list) -> None:
        now = self.clock()
        raw_last = rows[-1]
        last_rowid = raw_last[0]
        if self.first_row is None and self.read_after == 0:
            self.first_row = [rows[0][0], repr(tuple(rows[0]))]  # the table's first row
        tracker = self.tracker
        evicted_before = tracker.evicted_count
        if rows[0][0] <= self.replay_until:
            # Rows read before a restart: their sessions are rebuilt, but they
            # were counted then and closed sessions among them are skipped.
            split = bisect.bisect_right([row[0] for row in rows], self.replay_until)
            replayed, rows = rows[:split], rows[split:]
            unmapped: Dict[str, int] = {}
            replayed_events, _, _ = validate_rows(replayed, self.pairs, self.time_context, unmapped)
            kept = drop_replayed(replayed_events, self.closed_ranges)
            self._closed.extend(tracker.feed(kept, now))
            tracker.note_unmapped(unmapped)
            if last_rowid >= self.replay_until:
                self.closed_ranges = {}
        if rows:
            unmapped = {}
            mapped, ignored, bad = validate_rows(rows, self.pairs, self.time_context, unmapped)
            self._closed.extend(tracker.feed(mapped, now))
            if unmapped:
                tracker.note_unmapped(unmapped)
            self._count("events_processed", len(mapped))
            self._count("events_ignored", ignored)
            self._count("events_skipped", bad)
            self.events_this_run += len(rows)
            if bad:
                log.debug("Skipped %d malformed rows up to rowid %d", bad, last_rowid)
            if mapped:
                # The time of the last event read (for status), not a maximum over
                # every row: nothing is decided by it.
                self.last_event_time = mapped[-1][3]
        evicted = tracker.evicted_count - evicted_before
        if evicted:
            self._note_evicted(evicted, now)
        self.read_after = last_rowid
        self.head = max(self.head, last_rowid)
        self.last_row = [last_rowid, repr(tuple(raw_last))]
        self._dirty = True

    def _note_evicted(self, evicted: int, now: float) -> None:
        # Never silent: counted, and said at most once a minute with the number since.
        self._count("sessions_evicted", evicted)
        self._evictions_unlogged += evicted
        if now - self._evictions_logged_at >= EVICTION_LOG_SECONDS:
            log.warning(
                "%d session(s) closed early by the open-session cap (max_open_sessions = %d), the least "
                "recently active first; one is split in two if its id comes back within the idle threshold",
                self._evictions_unlogged,
                self.tracker.max_open,
            )
            self._evictions_unlogged = 0
            self._evictions_logged_at = now

    def _count(self, name: str, amount: int) -> None:
        if amount:
            self._counters[name] = self._counters.get(name, 0) + amount

    def close_idle(self) -> int:
        """Close sessions idle by processing time (only once caught up)."""
        if not self.caught_up:
            return 0
        closed = self.tracker.close_idle(self.clock())
        self._closed.extend(closed)
        return len(closed)

    def close_all(self, reason: str = CloseReason.END) -> None:
        self._closed.extend(self.tracker.close_all(reason))
        self._dirty = True

    # -- the database's identity -------------------------------------------------

    def _check_replaced(self) -> None:
        """At each drain's start: is the database still the history we read?

        Its identity is its rows, not its inode: a copy (a sync tool, an
        editor, a restore of the newest backup) has the same rows at the same
        rowids and is read on from the position; rows that differ there, a
        head below the position or a first row that differs (rowids reused
        after a wipe) make a rewritten history, read again from its start.
        """
        identity = file_identity(self.config.db_path)
        if identity is None:
            return
        moved = self.db_identity is not None and identity != self.db_identity
        if self.reader.replaced():
            self.reader.close()  # read the file now at the path
        if self.first_row is None and self.last_row is None:
            if moved:  # a state of an earlier build: no rows to compare
                self._database_replaced("it is a different file (new inode) and no fingerprint of its rows was kept")
                return
        else:
            why = self._rewritten()
            if why is not None:
                self._database_replaced(why)
                return
        if moved:
            log.info(
                "The events database %s was replaced by a copy (a new file with the same rows where it was "
                "read): the same history, continuing from rowid %d",
                self.config.db_path,
                self.read_after,
            )
            self.state.note_replaced("copy", f"continued from rowid {self.read_after}")
        if self.db_identity != identity:
            self.db_identity = identity
            self._dirty = True

    def _rewritten(self) -> Optional[str]:
        """Why the rows read before are not there any more, or None when they are."""
        rowids = [entry[0] for entry in (self.first_row, self.last_row) if entry is not None]
        first, found = self.reader.fingerprint_rows(rowids)
        if self.last_row is not None:
            rowid, text = self.last_row
            row = found.get(rowid)
            if row is not None and repr(row) != text:
                return f"the row at rowid {rowid}, the last one read, is another event"
            if row is None and self.reader.head() < rowid:
                return f"its newest rowid {self.reader.head()} is below the last one read, {rowid}"
        if self.first_row is not None:
            rowid, text = self.first_row
            row = found.get(rowid)
            if row is not None and repr(row) != text:
                return f"its first row, rowid {rowid}, is another event (rowids reused)"
            if first is not None and first[0] < rowid:
                return f"it has rows below its first one read before (rowid {first[0]} < {rowid})"
        if self.first_row is None and first is not None:
            self.first_row = [first[0], repr(first)]
            self._dirty = True
        return None

    def _database_replaced(self, why: str) -> None:
        log.warning(
            "The events database %s was replaced by a different history (%s); reading it again from its "
            "start (sessions delivered before are not sent again: the history keeps their keys)",
            self.config.db_path,
            why,
        )
        # Open sessions had real events: they close now, as they are.
        self.close_all(CloseReason.REPLACED)
        self.commit()
        if self.commit_failing:
            raise Unavailable(Unavailability.STATE, self.commit_failing)
        self.reader.close()
        # Rows up to the new head may hold sessions sent before: the ledger
        # decides (_against_ledger).  Read before forgetting, so that an
        # unreadable new file leaves the state as it was.
        rewrite_head = max(self.reader.head(), self.rewrite_head or 0)
        self.state.forget_database(rewrite_head)
        self.state.note_replaced("rewritten", why)
        self.rewrite_head = rewrite_head
        self.first_row = self.last_row = None
        self.read_after = self.replay_until = 0
        self.closed_ranges = {}
        self.db_identity = file_identity(self.config.db_path)
        self.head = 0
        self.time_context = LocalTimeContext()
        self._dirty = True

    def _note_unavailable(self, problem: Unavailable) -> None:
        previous = self.unavailable
        self.unavailable = problem
        if problem.kind != Unavailability.LOCKED:
            # Nothing more can be read for now: open sessions finish by processing
            # time.  A lock is brief: a backlog read half-way is not caught up, or
            # processing time would cut its sessions (hostile review).
            self.caught_up = True
        if previous is not None and previous.kind == problem.kind:
            return  # said once, not every poll
        if problem.kind in (Unavailability.MISSING, Unavailability.NO_TABLE):
            log.warning("%s; waiting for the memory daemon to create it", problem)
        elif problem.kind == Unavailability.LOCKED:
            log.info("%s; will retry", problem)
        else:
            log.error("%s; will retry", problem)

    def _note_available(self) -> None:
        if self.unavailable is not None:
            log.info("The events database %s is readable", self.config.db_path)
            self.unavailable = None

    # -- committing --------------------------------------------------------------

    def next_commit_at(self) -> Optional[float]:
        """When a moved position is due to be committed (None: nothing waits)."""
        if self.commit_failing:
            return self._retry_commit_at
        if self._closed:
            return self._last_commit
        if self._dirty:
            return self._last_commit + POSITION_COMMIT_SECONDS
        return None

    def commit_due(self) -> bool:
        """Commit closed sessions at once, a moved position only when due."""
        due = self.next_commit_at()
        if due is None or self.clock() < due:
            return True
        return self.commit()

    def commit(self) -> bool:
        """Write closed sessions and the position in one transaction."""
        if not self._dirty and not self._closed:
            return True
        low_water = self.tracker.low_water()
        resume_after = self.read_after if low_water is None else low_water - 1
        closed, known, counters = self._against_ledger(self._closed)
        self._assess(closed)
        counters["sessions_created"] = counters.get("sessions_created", 0) + len(closed)
        counters["sessions_too_short"] = sum(1 for session in closed if not session.learnable)
        counters["sessions_low_quality"] = sum(1 for session in closed if session.low_quality)
        rewrite_head = self.rewrite_head
        if rewrite_head is not None and resume_after >= rewrite_head:
            rewrite_head = None  # every row of the rewritten history is read again
        try:
            fingerprint = {"first": self.first_row, "last": self.last_row}
            added = self.state.commit(
                resume_after,
                max(self.read_after, self.replay_until),
                self.db_identity,
                closed,
                counters,
                known,
                rewrite_head,
                _compact_json(fingerprint) if self.first_row or self.last_row else None,
            )
        except StateError as error:
            self._retry_commit_at = self.clock() + POSITION_COMMIT_SECONDS
            if self.commit_failing is None:
                log.error("%s; reading pauses until the state can be written (nothing is lost)", error)
            self.commit_failing = str(error)
            return False
        if self.commit_failing:
            log.info("The state store is writable again")
            self.commit_failing = None
            self.resume_reading = True  # reading paused mid-way: go on at once
        self._closed = []
        self._counters = {}
        self._dirty = False
        self.rewrite_head = rewrite_head
        self._last_commit = self.clock()
        if added and self.on_outbox is not None:
            self.on_outbox()
        self._remember_unsent(closed)
        return True

    def _against_ledger(self, closed: List[ClosedSession]) -> tuple:
        """(fresh, known, counters): after a rewrite, leave out what was sent before.

        A session read again from a rewritten database (a restored backup, a
        history edited) whose content key the ledger (the history) or the
        outbox has is not committed again; nor one whose last event is older
        than the history's horizon (history_days), which the ledger may have
        pruned: re-sending it could teach it twice.  Both are counted and
        said once a run.
        """
        counters = dict(self._counters)
        rewrite_head = self.rewrite_head
        if rewrite_head is None:
            return closed, [], counters
        candidates = [session for session in closed if session.first_rowid <= rewrite_head]
        if not candidates:
            return closed, [], counters
        keys = {id(session): session.key for session in candidates}
        seen = self.history.delivered(list(keys.values())) | self.state.outbox_keys()
        horizon = time.time() - self.config.history_days * 86400.0
        fresh: List[ClosedSession] = []
        known: List[ClosedSession] = []
        already = past = 0
        for session in closed:
            key = keys.get(id(session))
            if key is None:
                fresh.append(session)
            elif key in seen:
                known.append(session)
                already += 1
            elif len(session.times) and max(session.times) < horizon:
                known.append(session)  # kept as a replay marker like the others
                past += 1
            else:
                fresh.append(session)
        if already:
            counters["sessions_already_delivered"] = counters.get("sessions_already_delivered", 0) + already
            if not self._ledger_skip_said:
                self._ledger_skip_said = True
                log.info(
                    "%d session(s) read again from the rewritten database were delivered before (the "
                    "history has their content keys): not sent again; counted as sessions_already_delivered",
                    already,
                )
        if past:
            counters["sessions_past_horizon"] = counters.get("sessions_past_horizon", 0) + past
            if not self._horizon_skip_said:
                self._horizon_skip_said = True
                log.info(
                    "%d session(s) read again from the rewritten database end before the history's horizon "
                    "(history_days = %g), past which delivered sessions are forgotten: not sent, to be sure "
                    "none goes twice; counted as sessions_past_horizon",
                    past,
                    self.config.history_days,
                )
        return fresh, known, counters

    # -- quality, history -------------------------------------------------------

    def _assess(self, closed: List[ClosedSession]) -> None:
        """Score the sessions min_quality must judge now, once each (a retried commit finds them scored).

        Nothing else waits on a score here, off this, the reading thread: a
        session to be sent is scored by the delivery thread when it is sent
        (PendingSession.scored_quality) from the same names, times and
        unmapped rows; one settled without sending (too short) when the
        history records it (unsent_entry); unusual sessions are judged when
        the API takes them (delivery.Deliverer._judge).
        """
        min_quality = self.config.min_quality
        if min_quality <= 0:
            return
        for session in closed:
            if session.quality is not None or not session.learnable:
                continue
            session.quality = session.score_quality()
            if session.quality < min_quality:
                session.low_quality = True
                log.debug(
                    "Session %s scored %.3f, below min_quality %g: not sent",
                    session.session_id,
                    session.quality,
                    min_quality,
                )

    def _remember_unsent(self, closed: List[ClosedSession]) -> None:
        """Sessions settled without being sent, for the history (it never stops learning)."""
        unsent = [session for session in closed if not session.learnable or session.low_quality]
        if not unsent:
            return
        if self.on_unsent is not None and self.on_unsent(unsent):
            return  # recorded by the delivery thread, off the reading path
        self.record_unsent(unsent)

    def record_unsent(self, sessions: List[ClosedSession]) -> None:
        """Record sessions settled without being sent in the history here (e.g. those a stopped delivery
        thread had not recorded yet: Deliverer.take_back_unsent)."""
        if sessions:
            self.history.record([unsent_entry(session) for session in sessions])

    def close(self) -> None:
        self.commit()
        self.reader.close()
        self.state.close()
        self.history.close()
