"""The events database's identity: is the file at db_path still the history we read?

Its identity is its rows, not its inode: a copy (a sync tool, an editor, a
restore of the newest backup) has the same rows at the same rowids and is read
on from the position; rows that differ there, a head below the position or a
first row that differs (rowids reused after a wipe) make a rewritten history,
read again from its start.  Rows found lower down, as one block, were
renumbered (a delete, then VACUUM, in a table whose rowid is no INTEGER
PRIMARY KEY): the same history, read on in the new numbering.  A rewritten
history's sessions may have been delivered before: up to the rewrite head,
the ledger (the history's content keys, and the outbox's: rewrite_ledger.py)
decides which are new.

The guarantee: a session of a rewritten history that was sent before, or that
ends before the history's horizon (history_days, past which the ledger may
have forgotten it), is never committed to the outbox again.

What this module keeps (the fingerprint, the file's identity, the rewrite
head) goes to the state store with the read position, in one value
(storage.state.Position).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from .core import row_digest
from .core.fates import Replacement
from .events import LARGEST_ROWID, EventReader, Unavailable, cut_by_length, file_identity
from .storage.state import Fingerprint, Position, StateStore

log = logging.getLogger(__name__)

SAME, COPY, REWRITTEN = Replacement.SAME, Replacement.COPY, Replacement.REWRITTEN
RENUMBERED = Replacement.RENUMBERED
# Rows with the last row's digest tried as where it moved to (a row written twice is not rare; more is).
RENUMBER_CANDIDATES = 4


def holds_rows_read(db_path: Path, position: Position) -> bool:
    """Whether the file at `db_path` holds the last row read at `position`: the same history (or a copy of it).

    For a db_path that changed between runs: another name of the same file, or
    a copy of it, is read on; only another history has the previous one finished.
    """
    last = position.fingerprint.last if position.fingerprint is not None else None
    if last is None:
        return False
    reader = EventReader(db_path)
    try:
        rowid, text = last
        row = reader.fingerprint_rows({rowid: row_digest.mask_of(text)}).found.get(rowid)
        return row is not None and row_digest.matches(row, text)
    except Unavailable:
        return False
    finally:
        reader.close()


def _never_reused(sequence: Optional[int], rowid: int) -> bool:
    """Whether SQLite will never give `rowid` again: AUTOINCREMENT has given it (or a later one) already."""
    return sequence is not None and sequence >= rowid


def _anchor_among(rows: Sequence[tuple], at: int, below: bool) -> Tuple[bool, Optional[tuple]]:
    """(found, row): the anchor wanted (anchor_wanted), from a batch just read, if it is there as stored.

    A batch's rows are consecutive in rowid order: the row before its last is
    the newest below it.  A row with a field cut for its length is not as
    stored (EventReader.read_batch): it is read again.
    """
    if not rows:
        return False, None
    if below:
        index = len(rows) - 2 if rows[-1][0] == at else -1
    else:
        index = at - rows[0][0]  # rowids are most often dense
        if not (0 <= index < len(rows) and rows[index][0] == at):
            low, high = 0, len(rows)
            while low < high:  # bisect by rowid, without a list of them
                middle = (low + high) // 2
                low, high = (middle + 1, high) if rows[middle][0] < at else (low, middle)
            index = low
    if 0 <= index < len(rows) and (below or rows[index][0] == at) and not cut_by_length(rows[index]):
        return True, tuple(rows[index])
    return False, None


class Finding(NamedTuple):
    """check()'s verdict, and whether the identity to commit changed (a new file, a first row learned)."""

    verdict: Replacement
    why: str = ""  # REWRITTEN, RENUMBERED: what differs
    changed: bool = False
    shifts: Tuple[int, ...] = ()  # RENUMBERED: how many rowids down the last row read may have moved, least first
    deleted_above: Optional[int] = None  # the rows above this rowid, read before, were deleted (never given again)


class DatabaseIdentity:
    """The events database as last read, and the questions asked of it before and after reading."""

    def __init__(self, db_path: Path, state: StateStore, position: Position):
        self.db_path = db_path
        self._state = state
        self.file = position.db_identity
        fingerprint = position.fingerprint or Fingerprint(None, None)
        # [rowid, digest of the row] of the table's first row and of the last row read (core/row_digest.py).
        self.first_row: Optional[list] = fingerprint.first
        self.last_row: Optional[list] = fingerprint.last
        # [rowid, digest] of a row at or below the first one the pipeline still needs (see anchor_wanted).
        self.low_row: Optional[list] = fingerprint.low
        self.rewrite_head = position.rewrite_head
        self._said: set = set()  # what was said once this run
        self._deleted_above: Optional[int] = None  # what _newest_deleted found at this check
        self._anchor_of: Optional[Tuple[int, bool]] = None  # what low_row was taken for (anchor_wanted)

    # -- before reading -----------------------------------------------------------

    def check(self, reader: EventReader, read_after: int) -> Finding:
        """At each drain's start: the same history (perhaps a copy of it), renumbered, or a rewritten one."""
        identity = file_identity(self.db_path)
        if identity is None:
            return Finding(SAME)
        moved = self.file is not None and identity != self.file
        if reader.replaced():
            reader.close()  # read the file now at the path
        changed = False
        self._deleted_above = None
        if self.first_row is None and self.last_row is None:
            if moved:  # no row was fingerprinted: nothing tells a copy from another history
                return self._rewritten("it is a different file (new inode) and no fingerprint of its rows was kept")
        else:
            differs, changed = self._rows_differ(reader)
            if differs is not None:
                return differs
        if moved:
            log.info(
                "The events database %s was replaced by a copy (a new file with the same rows where it was "
                "read): the same history, continuing from rowid %d",
                self.db_path,
                read_after,
            )
            self._state.note_replaced(COPY, f"continued from rowid {read_after}")
        if self.file != identity:
            self.file = identity
            changed = True
        return Finding(COPY if moved else SAME, changed=changed, deleted_above=self._deleted_above)

    def anchor_wanted(self, needed_from: int) -> Optional[Tuple[int, bool]]:
        """The low anchor to take, (at, below), unless held: the row at `needed_from`, or the one before the last read.

        A renumbering is verified from it (moved_as_one_block); with nothing
        needed, it tells the last row read from rows like it written since.
        """
        if self.last_row is None:
            return None
        wanted = (needed_from, False) if needed_from <= self.last_row[0] else (self.last_row[0], True)
        return None if wanted == self._anchor_of else wanted

    def take_anchor(self, wanted: Tuple[int, bool], row: Optional[tuple]) -> bool:
        """`row` read for anchor_wanted's `wanted`, of the numbering read; whether the anchor changed."""
        self._anchor_of = wanted
        anchor = [row[0], row_digest.digest(row)] if row is not None else None
        changed, self.low_row = anchor != self.low_row, anchor
        return changed

    def anchor_from_batch(self, rows: Sequence[tuple], needed_from: int) -> bool:
        """The anchor from a batch just read, if its row is there as stored (else the next read takes it)."""
        wanted = self.anchor_wanted(needed_from)
        found, row = _anchor_among(rows, *wanted) if wanted is not None else (False, None)
        return self.take_anchor(wanted, row) if found and wanted is not None else False

    def low_anchor(self, reader: EventReader, needed_from: int) -> bool:
        """The anchor read now (after a drain; the rows of the numbering read, or none taken)."""
        wanted = self.anchor_wanted(needed_from)
        found, row = reader.anchor_row(*wanted, self.last_row) if wanted is not None else (False, None)
        return self.take_anchor(wanted, row) if found and wanted is not None else False

    def check_head(self, reader: EventReader, read_after: int) -> Finding:
        """After a read found nothing: a head below the position is a rewritten history.

        Unless its rowids cannot be given again (AUTOINCREMENT): then the
        newest rows were deleted, and check() made sure at the drain's start
        that the rows below are the ones read.
        """
        if read_after <= 0:
            return Finding(SAME)
        self._at_largest(read_after)
        head = reader.head()
        if head >= read_after or _never_reused(reader.fingerprint_rows({}).sequence, read_after):
            return Finding(SAME)
        return self._last_row_moved(reader, f"its newest rowid is below our position {read_after}")

    def _rows_differ(self, reader: EventReader) -> Tuple[Optional[Finding], bool]:
        """(the finding if the rows read before are not there any more, whether the identity to commit changed)."""
        wanted: Dict[int, Optional[row_digest.Mask]] = {}
        for entry in (self.first_row, self.last_row):
            if entry is not None:
                mask = row_digest.mask_of(entry[1])
                # The same rowid kept in two forms (an upgrade): read whole, which either form compares.
                wanted[entry[0]] = mask if wanted.get(entry[0], mask) == mask else None
        first, found, sequence = reader.fingerprint_rows(wanted, learn_first=self.first_row is None)
        changed = False
        if self.last_row is not None:
            rowid, text = self.last_row
            row = found.get(rowid)
            if row is not None and not row_digest.matches(row, text):
                return self._last_row_moved(
                    reader, f"the row at rowid {rowid}, the last one read, is another event"
                ), False
            if row is None:
                head = reader.head()
                if head < rowid and not _never_reused(sequence, rowid):
                    why = f"its newest rowid {head} is below the last one read, {rowid}"
                    return self._last_row_moved(reader, why), False
                # Never given again (AUTOINCREMENT), or rows above it still there: deleted.
                changed = self._newest_deleted(reader, rowid)
            elif row is not None and not row_digest.is_digest(text):
                self.last_row = [rowid, row_digest.digest(row)]  # the older form, kept in the new one from now
                changed = True
        if self.first_row is not None:
            rowid, text = self.first_row
            row = found.get(rowid)
            if row is not None and not row_digest.matches(row, text):
                return self._rewritten(f"its first row, rowid {rowid}, is another event (rowids reused)"), False
            if first is not None and first[0] < rowid:
                why = f"it has rows below its first one read before (rowid {first[0]} < {rowid})"
                return self._rewritten(why), False
            if row is not None and not row_digest.is_digest(text):
                self.first_row = [rowid, row_digest.digest(row)]
                changed = True
        elif first is not None:
            self.first_row = [first[0], row_digest.digest(first)]
            changed = True
        return None, changed

    def _newest_deleted(self, reader: EventReader, rowid: int) -> bool:
        """The last row read, `rowid`, was deleted, perhaps with rows read before it: the same history without them.

        Its rowid is never given again (AUTOINCREMENT, or rows above it are
        there), so reading goes on above `rowid`; the fingerprint's last row is
        the newest row still there at or below it (read before: the rows up to
        the position were all read).
        """
        newest = reader.newest_up_to(rowid)
        log.info(
            "The events database %s lost rows it was read to (rowids %d to %d deleted, or some of them; they are "
            "never given again): the same history, read on",
            self.db_path,
            newest + 1,
            rowid,
        )
        row = reader.fingerprint_rows({newest: row_digest.UNMASKED}).found.get(newest) if newest else None
        self.last_row = [newest, row_digest.digest(row)] if row is not None else None
        self._deleted_above = newest
        return True

    def _last_row_moved(self, reader: EventReader, why: str) -> Finding:
        """The last row read is not at its rowid: found lower down, the rows were renumbered; else a rewrite.

        VACUUM renumbers the rows of a table whose rowid is no INTEGER
        PRIMARY KEY, 1 to n in order, so after a retention delete every row
        moves down by the number deleted below it.  Whether the rows the
        pipeline still needs moved as one block is for it to verify
        (Pipeline._moved_as_one_block); until then nothing is changed here.
        """
        if self.last_row is not None and reader.rowids_renumbered_by_vacuum():
            rowid, text = self.last_row
            # Rows like it (written since, or read before) make more than one place it may have moved to:
            # the pipeline keeps the one its anchor verifies; past RENUMBER_CANDIDATES, none is tried.
            matched = reader.rowids_of_digest(rowid, text, most=RENUMBER_CANDIDATES + 1)
            if len(matched) > RENUMBER_CANDIDATES:
                return self._rewritten(f"{why}; rows like the last one read are at {len(matched)} rowids or more")
            if matched:
                log.info(
                    "The last row read of the events database %s, rowid %d, is now at rowid %s (%s): renumbered, "
                    "as VACUUM does after a delete?",
                    self.db_path,
                    rowid,
                    " or ".join(str(found) for found in matched),
                    why,
                )
                return Finding(RENUMBERED, why, shifts=tuple(rowid - found for found in matched))
        return self._rewritten(why)

    def not_renumbered(self, finding: Finding) -> Finding:
        """A renumbering the pipeline could not verify: the rows it needs did not move as one block."""
        return self._rewritten(
            f"{finding.why}; the last row read is {' or '.join(map(str, finding.shifts))} rowids lower, but the "
            "rows still needed were deleted or moved otherwise, or like rows leave more than one way they moved"
        )

    def moved_as_one_block(self, reader: EventReader, needed_from: int, shift: int, by_last_alone=False) -> bool:
        """Whether every row from `needed_from` to the last one read is now `shift` rowids lower.

        VACUUM keeps the rows in order and numbers them 1 to n: with the
        anchor (a row at or below `needed_from`) and the last row read both
        found `shift` lower and no rowid between them free, no row between
        was deleted and each moved by `shift`.  `by_last_alone` (no row read
        needed): the last row read found there is enough.
        """
        last = self.last_row
        if last is None:
            return False
        anchor = self.low_row
        if needed_from > last[0]:
            anchor = last if by_last_alone else anchor if anchor is not None and anchor[0] < last[0] else None
        if anchor is None or anchor[0] > needed_from or anchor[0] - shift < 1:
            return False
        if anchor is not last:
            mask = row_digest.mask_of(anchor[1])
            row = reader.fingerprint_rows({anchor[0] - shift: mask}).found.get(anchor[0] - shift)
            if row is None or not row_digest.matches(row, anchor[1]):
                return False
        return reader.count_between(anchor[0] - shift, last[0] - shift) == last[0] - anchor[0] + 1

    def renumbered(self, resume_after: int, read_after: int, shift: int) -> Position:
        """The position to commit once the rows moved `shift` down, the last row read with them (see moved_down)."""
        assert self.last_row is not None
        last = [self.last_row[0] - shift, self.last_row[1]]
        low = [self.low_row[0] - shift, self.low_row[1]] if self.low_row is not None else None
        # The table's first row is learned again at the next check: it was deleted.
        fingerprint = Fingerprint(None, last, low)
        # The rows that may hold sessions sent before moved down with the rest: the new ones above are new.
        rewrite_head = self.rewrite_head - shift if self.rewrite_head is not None else None
        if rewrite_head is not None and rewrite_head <= resume_after:
            rewrite_head = None
        return Position(resume_after, read_after, file_identity(self.db_path), fingerprint, rewrite_head)

    def moved_down(self, position: Position) -> None:
        """renumbered()'s position was committed (with its note): the identity is the renumbered table's from now."""
        assert position.fingerprint is not None
        self.first_row = None
        self.last_row, self.low_row = position.fingerprint.last, position.fingerprint.low
        self._anchor_of = None
        self.file = position.db_identity
        self.rewrite_head = position.rewrite_head

    def _rewritten(self, why: str) -> Finding:
        log.warning(
            "The events database %s was replaced by a different history (%s); reading it again from its "
            "start (sessions delivered before are not sent again: the history keeps their keys)",
            self.db_path,
            why,
        )
        return Finding(REWRITTEN, why)

    def forget(self, reader: EventReader, why: str) -> None:
        """Start again on a rewritten history (what was read of the old one is committed first).

        Rows up to the new head may hold sessions sent before: the ledger
        decides.  The head is read before anything is forgotten, so that an
        unreadable new file leaves the state as it was.
        """
        reader.close()
        rewrite_head = max(reader.head(), self.rewrite_head or 0)
        self._state.forget_database(rewrite_head)
        self._state.note_replaced(REWRITTEN, why)
        self.rewrite_head = rewrite_head
        self.first_row = self.last_row = self.low_row = self._anchor_of = None
        self.file = file_identity(self.db_path)

    # -- while reading ----------------------------------------------------------------

    def saw(self, rows: list, from_start: bool) -> None:
        """A batch was read: its last row (and, read from the start, the table's first) is the fingerprint."""
        if self.first_row is None and from_start:
            self.first_row = [rows[0][0], row_digest.digest(rows[0])]
        last = rows[-1]
        self.last_row = [last[0], row_digest.digest(last)]
        self._at_largest(last[0])

    def _at_largest(self, rowid: int) -> None:
        """Said once a run, when the position reaches SQLite's largest rowid."""
        if rowid == LARGEST_ROWID and "largest rowid" not in self._said:
            self._said.add("largest rowid")
            log.warning(
                "The events table of %s holds a row at the largest rowid (%d): SQLite gives the rows written "
                "after it random rowids, below the position, which reading by position cannot find; delete that "
                "row (it was read) and the table is read again from its start (the ledger keeps what was sent "
                "from being sent again): see omnimemory-learner(1), ROWIDS",
                self.db_path,
                LARGEST_ROWID,
            )

    # -- committing ------------------------------------------------------------------

    def position(self, resume_after: int, replay_until: int) -> Position:
        """The position to commit, with the identity; the rewrite head ends once every row under it is read again."""
        rewrite_head = self.rewrite_head
        if rewrite_head is not None and resume_after >= rewrite_head:
            rewrite_head = None
        low = self.low_row if self.low_row is not None and self.low_row[0] <= resume_after + 1 else None
        fingerprint = Fingerprint(self.first_row, self.last_row, low) if self.first_row or self.last_row else None
        return Position(resume_after, replay_until, self.file, fingerprint, rewrite_head)

    def committed(self, position: Position) -> None:
        self.rewrite_head = position.rewrite_head
