"""A session's fate, an attempt's verdict, close reasons and kinds of unavailability are spelled in core/fates.py only."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

from omnimemory_learner import config
from omnimemory_learner.core import fates
from omnimemory_learner.core.fates import CloseReason, Fate, Replacement, Unavailability, Verdict

PACKAGE = Path(fates.__file__).resolve().parent.parent
# "retry" is also the operator's verb (`outbox retry`), never stored: not a word to police.
WORDS = {str(word) for kind in (Fate, CloseReason, Unavailability, Replacement) for word in kind} | {
    str(word) for word in Verdict if word is not Verdict.RETRY
}
# A configuration key that is also a close reason ("close_on") names the key, not the reason.
WORDS -= set(config.KEYS)


def _spelled_outside(tree: ast.AST) -> list:
    """String constants equal to a word of the vocabulary, except where they mean something else.

    Left alone: __slots__ (attribute names such as low_quality), and the left
    side of `in` (a word looked for in another program's message, such as
    SQLite's "database is locked").
    """
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__slots__" for target in node.targets
        ):
            skip.update(id(child) for child in ast.walk(node.value))
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            skip.add(id(node.left))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in WORDS and id(node) not in skip
    ]


def test_the_words_are_spelled_in_fates_only():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "fates.py" and path.parent.name == "core":
            continue
        for line, word in _spelled_outside(ast.parse(path.read_text(), str(path))):
            found.append(f"{path.relative_to(PACKAGE)}:{line}: {word!r}")
    assert found == []


def test_the_check_finds_a_word_spelled_elsewhere():
    # The check itself can fail: a fate spelled as a literal is caught, in code and as a dict key.
    tree = ast.parse('status = "pending"\ncounts = {"learned": 1}\nif "locked" in message: pass\n')
    assert _spelled_outside(tree) == [(1, "pending"), (2, "learned")]


def test_the_words_are_their_values_in_sql_json_and_text():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (Fate.LEARNED,))
    assert db.execute("SELECT x, typeof(x) FROM t").fetchone() == ("learned", "text")
    assert db.execute("SELECT count(*) FROM t WHERE x = ?", (Fate.LEARNED,)).fetchone() == (1,)
    assert f"{Fate.PENDING} {CloseReason.IDLE:>6}" == "pending   idle"
    assert str(Unavailability.NO_TABLE) == "no-table"
    assert Fate("too_short") is Fate.TOO_SHORT
    # Dicts read back from JSON or SQLite are looked up by the words, and the other way round.
    assert {"rejected": 1}[Fate.REJECTED] == 1 and {Fate.REJECTED: 1}["rejected"] == 1


def test_the_values_on_disk_do_not_change():
    # state.db and history.db hold these strings: a rename here would orphan every stored row.
    assert {str(fate) for fate in Fate} == {
        "pending",
        "learned",
        "not_learned",
        "rejected",
        "too_short",
        "low_quality",
        "already_delivered",
        "dropped",
    }
    assert {str(reason) for reason in CloseReason} == {
        "idle",
        "close_on",
        "chunk",
        "evicted",
        "end",
        "replaced",
        "rows_deleted",
    }
    assert {str(verdict) for verdict in Verdict} == {"learned", "not_learned", "rejected", "retry"}
    assert {str(found) for found in Replacement} == {"same", "copy", "renumbered", "rewritten"}
    assert all(str(verdict) == str(fates.FATE_OF_VERDICT[verdict]) for verdict in fates.FATE_OF_VERDICT)
