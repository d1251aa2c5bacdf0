"""From database rows to the outbox: read, map, group, commit.

Shared by the service loop and `backfill` (runner.py wires it).  Owns the read
position, the session tracker and the state store; knows nothing of signals,
watching, delivery or the service manager.  Whoever runs it hands it a
callback, `on_outbox`, called after a commit put new sessions in the outbox
(the loop and `backfill` wake their delivery thread with it), and `on_unsent`,
handed the sessions a commit settled without sending (too short, below
min_quality): the delivery side (delivery/settle.py) is the one writer of a
settled session, so the pipeline never writes the history.

The guarantee: closed sessions and the position are committed together
(storage.state), and a rewritten database's sessions go past the ledger first
(database_identity.py).  Whoever runs it asks it questions (`next_deadline()`,
`changed()`, `should_read_on()`, `progress()`), never its parts.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import logging
import time
from operator import itemgetter
from typing import Callable, Dict, List, NamedTuple, Optional

from .config import Config
from .core.fates import CloseReason, Unavailability
from .core.mapping import command_pairs
from .core.sessions import ClosedSession, SessionTracker, drop_replayed
from .database_identity import RENUMBERED, REWRITTEN, DatabaseIdentity, Finding
from .events import EventReader, LocalTimeContext, Unavailable, validate_rows
from .rewrite_ledger import RewriteLedger
from .storage.snapshot import statistics
from .storage.state import READER_CACHE_KIB, StateError, StateStore

log = logging.getLogger(__name__)

# During a long catch-up, commit at least this often so delivery can start
# and a crash loses little work.
COMMIT_EVERY_SECONDS = 1.0
# ... and once this many closed sessions wait: they are held in memory until
# the commit, so a fast catch-up (a backlog with many ids) stays small.
COMMIT_EVERY_SESSIONS = 5000
# A position that moved with no session closed is committed at most this
# often: nothing is lost by waiting (a restart re-reads a few events), and an
# fsync per live event would put disk latency on every event's path.  A
# failed commit is retried this often too.
POSITION_COMMIT_SECONDS = 5.0
# The garbage collector's first threshold while a drain reads (see drain).
GC_THRESHOLD_WHILE_READING = 20_000
# Checks of the identity in a row, each undone by the next batch's read (the table changed between).
MOVED_CHECKS = 3
# Sessions evicted by the open-session cap are logged at most this often.
EVICTION_LOG_SECONDS = 60.0


class CommitState:
    """What the pipeline owes the state store, as one named state.

    CLEAN        nothing read or closed since the last commit
    UNCOMMITTED  the position moved or sessions closed: committed when due
    FAILING      the last commit failed (`error`): reading pauses, retried at `retry_at`

    A commit that works after FAILING sets `read_on`: the reading it paused
    goes on at once (the next drain clears it).
    """

    CLEAN = "clean"
    UNCOMMITTED = "uncommitted"
    FAILING = "failing"
    __slots__ = ("committed_at", "error", "name", "read_on", "retry_at")

    def __init__(self, now: float):
        self.name = self.CLEAN
        self.committed_at = now
        self.retry_at = 0.0
        self.error: Optional[str] = None
        self.read_on = False

    @property
    def failing(self) -> bool:
        return self.name == self.FAILING

    def moved(self) -> None:
        if self.name == self.CLEAN:
            self.name = self.UNCOMMITTED

    def failed(self, error: StateError, now: float) -> None:
        if self.name != self.FAILING:
            log.error("%s; reading pauses until the state can be written (nothing is lost)", error)
        self.name, self.error, self.retry_at = self.FAILING, str(error), now + POSITION_COMMIT_SECONDS

    def committed(self, now: float) -> None:
        if self.name == self.FAILING:
            log.info("The state store is writable again")
            self.read_on = True
        self.name, self.error, self.committed_at = self.CLEAN, None, now

    def due_at(self, sessions_waiting: bool) -> Optional[float]:
        """When the next commit is due (None: nothing waits)."""
        if self.name == self.FAILING:
            return self.retry_at
        if sessions_waiting:
            return self.committed_at
        if self.name == self.UNCOMMITTED:
            return self.committed_at + POSITION_COMMIT_SECONDS
        return None


class _Cursor:
    """Where reading is: the position, the replay of rows read before a restart, what the reads found."""

    __slots__ = (
        "after",
        "caught_up",
        "closed_ranges",
        "head",
        "last_event_time",
        "replay_until",
        "resumed_after",
        "time_context",
        "unavailable",
    )

    def __init__(self, after: int, replay_until: int, closed_ranges: dict):
        self.after = after
        self.resumed_after = after  # the position read from the state at start
        self.replay_until = replay_until
        self.closed_ranges = closed_ranges  # closed sessions among the rows replayed: skipped
        self.head = 0
        # The previous event's time, for resolving a naive local time in the
        # hour a DST fall-back repeats (validate_rows); carried across batches
        # so batch boundaries do not change it.
        self.time_context = LocalTimeContext()
        self.last_event_time: Optional[float] = None
        self.caught_up = False
        self.unavailable: Optional[Unavailable] = None

    def restart(self) -> None:
        """A rewritten history: read from its start."""
        self.after = self.replay_until = self.head = self.resumed_after = 0
        self.closed_ranges = {}
        self.time_context = LocalTimeContext()

    def renumber(self, shift: int, closed_ranges: dict) -> None:
        """The rows moved `shift` down; `closed_ranges`: the outbox's, renumbered, for what is still replayed."""
        self.after -= shift
        self.resumed_after -= shift
        self.replay_until = max(self.replay_until - shift, self.after)
        self.closed_ranges = closed_ranges if self.replay_until > self.after else {}
        self.head = max(self.after, self.replay_until)

    def note_unavailable(self, problem: Unavailable) -> None:
        previous = self.unavailable
        self.unavailable = problem
        if problem.kind != Unavailability.LOCKED:
            # Nothing more can be read for now: open sessions finish by processing
            # time.  A lock is brief: a backlog read half-way is not caught up, or
            # processing time would cut its sessions.
            self.caught_up = True
        if previous is not None and previous.kind == problem.kind:
            return  # said once, not every poll
        if problem.kind in (Unavailability.MISSING, Unavailability.NO_TABLE):
            log.warning("%s; waiting for the memory daemon to create it", problem)
        elif problem.kind == Unavailability.LOCKED:
            log.info("%s; will retry", problem)
        else:
            log.error("%s; will retry", problem)

    def note_available(self, db_path: object) -> None:
        if self.unavailable is not None:
            log.info("The events database %s is readable", db_path)
            self.unavailable = None


class _EvictionLog:
    """Sessions the open-session cap closed early: never silent, said at most once a minute with the number since."""

    __slots__ = ("logged_at", "unlogged")

    def __init__(self) -> None:
        self.unlogged = 0
        self.logged_at = float("-inf")

    def note(self, evicted: int, now: float, max_open: int) -> None:
        self.unlogged += evicted
        if now - self.logged_at >= EVICTION_LOG_SECONDS:
            log.warning(
                "%d session(s) closed early by the open-session cap (max_open_sessions = %d), the least "
                "recently active first; one is split in two if its id comes back within the idle threshold",
                self.unlogged,
                max_open,
            )
            self.unlogged = 0
            self.logged_at = now


class ReadProgress(NamedTuple):
    """What the status snapshot shows of the reading side."""

    open_sessions: int
    stats: dict  # storage.snapshot.statistics, with last_event_time
    db_head: int  # the largest rowid read
    database_problem: Optional[str]
    state_problem: Optional[str]


def _new_tracker(config: Config) -> SessionTracker:
    return SessionTracker(
        config.idle_seconds,
        config.min_commands_for_learning,
        config.max_session_commands,
        config.max_open_sessions,
        config.close_on,
        config.fold_repeats,
    )


def _pairs(config: Config) -> Dict[str, tuple]:
    """What validate_rows maps; an excluded type too (its rows then dropped and counted as excluded, not unmapped)."""
    pairs = command_pairs(config.event_map)
    for event_type in config.exclude_event_types:
        pairs.setdefault(event_type, ("", event_type))
    return pairs


def _assess(closed: List[ClosedSession], min_quality: float) -> None:
    """Score the sessions min_quality must judge now, once each (a retried commit finds them scored).

    Nothing else waits on a score here, off this, the reading thread: a
    session to be sent is scored by the delivery thread when it is sent
    (PendingSession.scored_quality); one settled without sending (too
    short) when the history records it (unsent_entry); unusual sessions
    are judged when the API takes them.
    """
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


class Pipeline:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        on_outbox: Optional[Callable[[], None]] = None,
        on_unsent: Optional[Callable[[List[ClosedSession]], None]] = None,
    ):
        """`on_unsent` None: nobody records the sessions settled without sending (a reader that only reads)."""
        self.config = config
        self.on_outbox = on_outbox
        self.on_unsent = on_unsent
        self.clock = clock
        self.state = StateStore(config.state_dir, cache_kib=READER_CACHE_KIB)
        self.reader = EventReader(config.db_path)
        self.tracker = _new_tracker(config)
        self.pairs = _pairs(config)
        position = self.state.position()
        replaying = position.replay_until > position.resume_after
        closed_ranges = self.state.closed_ranges(position.resume_after) if replaying else {}
        self._cursor = _Cursor(position.resume_after, position.replay_until, closed_ranges)
        self._closed: List[ClosedSession] = []
        self._counters: Dict[str, int] = {}
        self._commit = CommitState(clock())
        self._evictions = _EvictionLog()
        # The ledger a rewritten database is checked against.
        self.identity = DatabaseIdentity(config.db_path, self.state, position)
        self.ledger = RewriteLedger(config.state_dir, self.state)

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
        self.pairs = _pairs(config)
        self.config = dataclasses.replace(config, db_path=self.config.db_path, state_dir=self.config.state_dir)

    # -- questions for whoever runs it ------------------------------------------------

    @property
    def read_after(self) -> int:
        """The last rowid read."""
        return self._cursor.after

    @property
    def unavailable(self) -> Optional[Unavailable]:
        """Why the database could not be read at the last try (None: it could)."""
        return self._cursor.unavailable

    def next_deadline(self) -> Optional[float]:
        """When the longest-idle open session reaches the idle threshold (processing time)."""
        return self.tracker.next_deadline()

    def changed(self) -> bool:
        """Cheaply: did anyone commit to (or replace) the database since the last check?"""
        return self.reader.changed()

    def should_read_on(self) -> bool:
        """True once a commit works again after failing: the reading it paused goes on without waiting."""
        return self._commit.read_on

    def backlog(self) -> int:
        """How many rowids the database holds past the position (raises Unavailable)."""
        return max(0, self.reader.head() - self._cursor.after)

    def problem(self) -> Optional[str]:
        """Why reading stopped: the database unavailable, or the state store unwritable (None: neither)."""
        unavailable = self._cursor.unavailable
        return str(unavailable) if unavailable else self._commit.error

    def progress(self) -> ReadProgress:
        """What the status snapshot shows of the reading side (reads the state store's counters)."""
        cursor = self._cursor
        open_sessions = self.tracker.open_count
        stats = statistics(self.state, open_sessions)
        stats["last_event_time"] = cursor.last_event_time
        unavailable = cursor.unavailable
        return ReadProgress(
            open_sessions,
            stats,
            cursor.head,
            str(unavailable) if unavailable else None,
            self._commit.error,
        )

    # -- reading ---------------------------------------------------------------

    def drain(self, should_stop=lambda: False, between_batches=None) -> bool:
        """Read batches until caught up; False if the database could not be read.

        Sessions are cut the same way however the rows come (sessions.py);
        closing by processing time waits until everything is read (close_idle).
        The connection is closed after (EventReader.rest): none stays open
        between drains to keep the writer from leaving WAL mode.
        """
        threshold = gc.get_threshold()
        # Each batch makes some 2,000 containers (its rows, its events) that die with it: collected
        # every 700 allocations, as by default, each batch's were traversed and promoted, a tenth
        # of a catch-up's CPU.  Cyclic garbage waits a little longer; nothing else changes.
        gc.set_threshold(max(threshold[0], GC_THRESHOLD_WHILE_READING), *threshold[1:])
        try:
            read = self._read_batches(should_stop, between_batches)
            if read:
                _take_low_anchor(self)
        finally:
            gc.set_threshold(*threshold)
            self.reader.rest()
        if read:
            self.commit_due()
        return read

    def _read_batches(self, should_stop, between_batches) -> bool:
        batch_size = self.config.batch_size
        cursor = self._cursor
        self._commit.read_on = False
        first, moved = True, 0
        while not should_stop():
            if self._commit.failing:
                return False
            try:
                if first:
                    self._read_again_if(self.identity.check(self.reader, cursor.after))
                rows = _read_checked(self)
                if rows is None:  # the rows read moved since the check: check again
                    first, moved = True, _moved_again(moved)
                    continue
                if not rows and self._read_again_if(self.identity.check_head(self.reader, cursor.after)):
                    continue
            except Unavailable as problem:
                cursor.note_unavailable(problem)
                return False
            cursor.note_available(self.config.db_path)
            first, moved = False, 0
            if rows:
                self._process(rows)
            if len(rows) < batch_size:
                cursor.caught_up = True
                break
            cursor.caught_up = False
            if between_batches is not None:
                between_batches()
            if (
                self.clock() - self._commit.committed_at >= COMMIT_EVERY_SECONDS
                or len(self._closed) >= COMMIT_EVERY_SESSIONS
            ):
                self.commit()  # with the anchor taken after the batch
        return True

    def _process(self, rows: list) -> None:
        now = self.clock()
        cursor = self._cursor
        last_rowid = rows[-1][0]
        tracker = self.tracker
        evicted_before = tracker.evicted_count
        self.identity.saw(rows, cursor.after == 0)
        if rows[0][0] <= cursor.replay_until:
            # Rows read before a restart: their sessions are rebuilt, but they
            # were counted then and closed sessions among them are skipped.
            split = bisect.bisect_right([row[0] for row in rows], cursor.replay_until)
            replayed, rows = rows[:split], rows[split:]
            unmapped: Dict[str, int] = {}
            replayed_events, _, _ = _read_events(self, replayed, unmapped, counted=False)  # counted when first read
            kept = drop_replayed(replayed_events, cursor.closed_ranges)
            self._closed.extend(tracker.feed(kept, now))
            tracker.note_unmapped(unmapped)
            if last_rowid >= cursor.replay_until:
                cursor.closed_ranges = {}
        if rows:
            unmapped = {}
            mapped, ignored, bad = _read_events(self, rows, unmapped)
            self._closed.extend(tracker.feed(mapped, now))
            if unmapped:
                tracker.note_unmapped(unmapped)
            self._count("events_processed", len(mapped))
            self._count("events_ignored", ignored)
            self._count("events_skipped", bad)
            if bad:
                log.debug("Skipped %d malformed rows up to rowid %d", bad, last_rowid)
            if mapped:
                # The time of the last event read (for status), not a maximum over
                # every row: nothing is decided by it.
                cursor.last_event_time = mapped[-1][3]
        evicted = tracker.evicted_count - evicted_before
        if evicted:
            self._count("sessions_evicted", evicted)
            self._evictions.note(evicted, now, tracker.max_open)
        cursor.after = last_rowid
        cursor.head = max(cursor.head, last_rowid)
        self.identity.anchor_from_batch(rows, self._needed_from())
        self._commit.moved()

    def _count(self, name: str, amount: int) -> None:
        if amount:
            self._counters[name] = self._counters.get(name, 0) + amount

    def close_idle(self) -> int:
        """Close sessions idle by processing time (only once caught up)."""
        if not self._cursor.caught_up:
            return 0
        closed = self.tracker.close_idle(self.clock())
        if closed:
            self._closed.extend(closed)
            # The low-water mark rose: its row, before a retention deletes the closed sessions' rows.
            try:
                _take_low_anchor(self)
            finally:
                self.reader.rest()
        return len(closed)

    def close_all(self, reason: str = CloseReason.END) -> None:
        self._closed.extend(self.tracker.close_all(reason))
        self._commit.moved()

    def _read_again_if(self, finding: Finding) -> bool:
        """On a rewritten history: commit what was read of the old one, then read the new one from its start."""
        if finding.changed:
            self._commit.moved()
        if finding.deleted_above is not None:
            _close_deleted(self, finding.deleted_above)
        if finding.verdict == RENUMBERED:
            if _read_on_renumbered(self, finding):
                return True
            finding = self.identity.not_renumbered(finding)
        if finding.verdict != REWRITTEN:
            return False
        # Open sessions had real events: they close now, as they are.
        self.close_all(CloseReason.REPLACED)
        self.commit()
        if self._commit.failing:
            raise Unavailable(Unavailability.STATE, str(self._commit.error))
        self.identity.forget(self.reader, finding.why)
        self._cursor.restart()
        self._commit.moved()
        return True

    def _needed_from(self) -> int:
        """The first rowid the pipeline still needs: the oldest open session's first, or the next to read."""
        low_water = self.tracker.low_water()
        return self._cursor.after + 1 if low_water is None else low_water

    # -- committing --------------------------------------------------------------

    def next_commit_at(self) -> Optional[float]:
        """When a moved position is due to be committed (None: nothing waits)."""
        return self._commit.due_at(bool(self._closed))

    def commit_due(self) -> bool:
        """Commit closed sessions at once, a moved position only when due."""
        due = self.next_commit_at()
        if due is None or self.clock() < due:
            return True
        return self.commit()

    def commit(self) -> bool:
        """Write closed sessions and the position in one transaction."""
        if self._commit.name == CommitState.CLEAN and not self._closed:
            return True
        low_water = self.tracker.low_water()
        cursor = self._cursor
        resume_after = cursor.after if low_water is None else low_water - 1
        counters = dict(self._counters)
        closed, known = self.ledger.against(
            _without_excluded(self, counters), counters, self.config.history_days, self.identity.rewrite_head
        )
        _assess(closed, self.config.min_quality)
        # Settled without sending (too short, below min_quality): counted, and handed over once committed.
        unsent = [session for session in closed if not session.learnable or session.low_quality]
        too_short = sum(1 for session in unsent if not session.learnable)
        counters["sessions_created"] = counters.get("sessions_created", 0) + len(closed)
        counters["sessions_too_short"] = too_short
        counters["sessions_low_quality"] = len(unsent) - too_short
        position = self.identity.position(resume_after, max(cursor.after, cursor.replay_until))
        try:
            added = self.state.commit(position, closed, counters, known)
        except StateError as error:
            self._commit.failed(error, self.clock())
            return False
        self._commit.committed(self.clock())
        self.identity.committed(position)
        self._closed = []
        self._counters = {}
        if added and self.on_outbox is not None:
            self.on_outbox()
        if unsent and self.on_unsent is not None:
            self.on_unsent(unsent)
        return True

    def close(self) -> None:
        self.commit()
        self.reader.close()
        self.state.close()
        self.ledger.close()


def _read_events(pipeline: Pipeline, rows: list, unmapped: Dict[str, int], counted: bool = True) -> tuple:
    """validate_rows, then the exclusion rules: the events no rule drops, rows of other types, malformed rows.

    The rows dropped are counted (events_excluded) unless `counted` is False (a replay:
    counted when first read).
    """
    events, ignored, bad = validate_rows(rows, pipeline.pairs, pipeline._cursor.time_context, unmapped)
    privacy = pipeline.config.privacy
    if not privacy.active:
        return events, ignored, bad
    events, excluded = privacy.keep(events, unmapped)
    if counted:
        pipeline._count("events_excluded", excluded)
    return events, ignored, bad


def _without_excluded(pipeline: Pipeline, counters: Dict[str, int]) -> List[ClosedSession]:
    """The closed sessions less those a rule added by a reload excludes (open when it came): never committed.

    Their events are counted both in the commit's `counters` and in what a failed commit keeps for the next.
    """
    privacy, closed = pipeline.config.privacy, pipeline._closed
    if not privacy.active or not closed:
        return closed
    kept = []
    for session in closed:
        if privacy.excludes_session(session.session_id, map(itemgetter(1), session.pairs)):
            counters["events_excluded"] = counters.get("events_excluded", 0) + len(session.pairs)
            pipeline._count("events_excluded", len(session.pairs))
        else:
            kept.append(session)
    pipeline._closed = kept
    return kept


def _read_checked(pipeline: Pipeline) -> Optional[list]:
    """A batch, in one read with the identity's questions: the last row read still there (else None), the anchor."""
    identity = pipeline.identity
    anchor = identity.anchor_wanted(pipeline._needed_from())
    batch = pipeline.reader.read_on(pipeline._cursor.after, pipeline.config.batch_size, identity.last_row, anchor)
    if batch is not None and anchor is not None and identity.take_anchor(anchor, batch[1]):
        pipeline._commit.moved()
    return None if batch is None else batch[0]


def _take_low_anchor(pipeline: Pipeline) -> None:
    """The digest of the first row still needed, for the commit (DatabaseIdentity.low_anchor)."""
    try:
        if pipeline.identity.low_anchor(pipeline.reader, pipeline._needed_from()):
            pipeline._commit.moved()
    except Unavailable:
        pass  # the anchor taken before is still at or below the mark; the next drain takes it


def _moved_again(times: int) -> int:
    """One more batch found the last row read gone since its check; a table changing that fast waits for later."""
    if times >= MOVED_CHECKS:
        raise Unavailable(Unavailability.LOCKED, f"the events table changed under {MOVED_CHECKS} reads in a row")
    return times + 1


def _move_down(pipeline: Pipeline, finding: Finding, needed_from: int) -> bool:
    """Renumber what the pipeline holds by the one of `finding.shifts` by which every row from `needed_from` moved.

    None, or more than one (rows alike, nothing open to tell them apart by
    its anchor): False, a rewrite.  The outbox's rows, the position and the
    note for status move in one transaction, then the identity, the open
    sessions and the cursor: a failure (StateError) or a crash before leaves
    the old numbering whole, to be found renumbered again.
    """
    identity, cursor = pipeline.identity, pipeline._cursor
    reader, shifts = pipeline.reader, finding.shifts
    verified = [shift for shift in shifts if identity.moved_as_one_block(reader, needed_from, shift)]
    if not verified and len(shifts) == 1:  # nothing needed, the row below the last one read deleted as well
        verified = [shift for shift in shifts if identity.moved_as_one_block(reader, needed_from, shift, True)]
    if len(verified) != 1:
        return False
    shift = verified[0]
    assert identity.last_row is not None
    position = identity.renumbered(needed_from - 1 - shift, identity.last_row[0] - shift, shift)
    pipeline.state.renumber(position, shift, f"{finding.why}; its rows now {shift} rowids lower")
    identity.moved_down(position)
    pipeline.tracker.renumber(shift)
    cursor.renumber(shift, pipeline.state.closed_ranges(cursor.after - shift))
    log.info(
        "The events database %s was renumbered (its rows now %d rowids lower, as VACUUM does after a delete): "
        "the same history, read on from rowid %d; the %d open session(s) keep their events",
        pipeline.config.db_path,
        shift,
        cursor.after,
        pipeline.tracker.open_count,
    )
    return True


def _read_on_renumbered(pipeline: Pipeline, finding: Finding) -> bool:
    """Rows moved down (a delete, then VACUUM): go on in the new numbering, the open sessions whole (_move_down).

    False (a rewrite) half-way through the replay after a start: what the
    open sessions hold and what the outbox says of the rows ahead are not
    one block then.
    """
    cursor = pipeline._cursor
    last_row = pipeline.identity.last_row
    if last_row is None or last_row[0] != max(cursor.after, cursor.replay_until):
        return False
    if cursor.resumed_after < cursor.after < cursor.replay_until:
        return False
    pipeline.commit()  # what was read and closed, in the old numbering
    if pipeline._commit.failing:
        raise Unavailable(Unavailability.STATE, str(pipeline._commit.error))
    try:
        return _move_down(pipeline, finding, pipeline._needed_from())
    except StateError as error:
        pipeline._commit.failed(error, pipeline.clock())
        raise Unavailable(Unavailability.STATE, str(error)) from None


def _close_deleted(pipeline: Pipeline, head: int) -> None:
    """The newest rows were deleted: the open sessions none of whose rows is left are committed now, as read.

    Kept open, a restart before they end would replay rows that are no
    longer there and lose them; those with rows left are rebuilt from
    those, once.
    """
    closed = pipeline.tracker.close_above(head, CloseReason.DELETED)
    if closed:
        log.info("%d open session(s) lost every row to the delete: committed as read", len(closed))
        pipeline._closed.extend(closed)
        pipeline._commit.moved()
