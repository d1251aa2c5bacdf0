"""How a session went, from the evidence in its command sequence (pure): a verdict, the rule that gave it, why.

The original rule (core/outcome.py, `outcome_rule = "last3"`) calls a
session a success when one of its last three commands is a save, and nearly
every editing session ends with one.  This one reads what the events say
happened to the work: edited, verified (tests, a finished command), attempted
(a build started), saved, committed or pushed, deleted.  The rules, first
that applies wins (the man page's OUTCOME table):

  deleted        failure  a file deleted after the last save, commit or push
  committed      success  committed or pushed after the last edit
  rework         failure  the same verification or build made again after
                          edits, and no commit after the last one
  verified       success  tests run or a command finished after the last edit
  abandoned      failure  edits after the last verification or build, no
                          commit after them
  inconclusive   -        no verification or commit to judge by (a build
                          started after the last edit, not seen to finish)

Only command names are read (the event types they map from, never payloads
or times), before folding; a command this module does not know (a user's
`event_map` may add any) is neither evidence nor an edit.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from .outcome import has_outcome_indicator, infer_outcome

SUCCESS = "success"
FAILURE = "failure"
INCONCLUSIVE = "inconclusive"

_EDIT, _SAVE, _VERIFY, _ATTEMPT, _COMMIT, _DELETE = range(6)
_CLASS: Dict[str, int] = {
    "edit_code": _EDIT,
    "modify_file": _EDIT,
    "create_file": _EDIT,
    "save_file": _SAVE,
    "run_tests": _VERIFY,
    "command_completed": _VERIFY,
    "build_project": _ATTEMPT,
    "commit_changes": _COMMIT,
    "push_changes": _COMMIT,
    "delete_file": _DELETE,
}

# (name, outcome, the reason said for it), in the order they are tried.
RULES = (
    ("deleted", FAILURE, "a file was deleted after the last save, commit or push"),
    ("committed", SUCCESS, "committed or pushed after the last edit"),
    ("rework", FAILURE, "verified again after fixes and never committed after"),
    ("verified", SUCCESS, "tests run or a command finished after the last edit"),
    ("abandoned", FAILURE, "edited after the last verification, not verified or committed again"),
    ("inconclusive", INCONCLUSIVE, "no verification or commit after the last edit to judge by"),
)
_RULE = {name: (name, outcome, reason) for name, outcome, reason in RULES}


class Verdict(NamedTuple):
    """The evidence rule's judgement of one command sequence."""

    outcome: str  # SUCCESS, FAILURE or INCONCLUSIVE
    rule: str  # the name of the rule that gave it (RULES)
    reason: str
    rework: int  # times a verification or build was made again after edits since it was last made


def judge(commands: Sequence[str]) -> Verdict:
    """The verdict on `commands` (command names in the order of the session), one pass over them."""
    last_edit = last_check = last_commit = last_kept = last_delete = -1
    rework = 0
    made: Dict[str, int] = {}  # where each check was last made: made again after an edit is rework
    for index, command in enumerate(commands):
        kind = _CLASS.get(command)
        if kind is None:
            continue
        if kind == _EDIT:
            last_edit = index
        elif kind in (_VERIFY, _ATTEMPT):
            if made.get(command, index) < last_edit:
                rework += 1
            made[command] = last_check = index
        elif kind == _COMMIT:
            last_commit = last_kept = index
        elif kind == _SAVE:
            last_kept = index
        else:
            last_delete = index
    if last_delete > last_kept:
        rule = "deleted"
    elif last_commit > last_edit:
        rule = "committed"
    elif rework and last_commit < last_check:
        rule = "rework"
    elif last_check > last_edit:
        # A build started and not seen to finish says nothing yet of how it went.
        rule = "verified" if _CLASS[commands[last_check]] == _VERIFY else "inconclusive"
    elif last_check >= 0:
        rule = "abandoned"
    else:
        rule = "inconclusive"
    name, outcome, reason = _RULE[rule]
    return Verdict(outcome, name, reason, rework)


def sent_outcome(verdict: Verdict, inconclusive_outcome: str) -> str:
    """What the API is told: "success" or "failure" (an inconclusive verdict as configured)."""
    return inconclusive_outcome if verdict.outcome == INCONCLUSIVE else verdict.outcome


# -- the rule a configuration chooses (outcome_rule, inconclusive_outcome) ----------

EVIDENCE = "evidence"
LAST3 = "last3"
OUTCOME_RULES = (EVIDENCE, LAST3)
SENT_OUTCOMES = (SUCCESS, FAILURE)
# The original rule's two ways to decide, named as the evidence rules are (history's `rule`).
LAST3_RULES = (
    ("last3", "-", "a save, commit, push or finished command (success) or a delete (failure) in the last three"),
    ("last3-default", SUCCESS, "none of those in the last three commands: success by default"),
)
_REASONS = {name: reason for name, _, reason in RULES + LAST3_RULES}


class Judged(NamedTuple):
    """What is sent and kept of one session's outcome."""

    outcome: str  # as the API is told: SUCCESS or FAILURE
    rule: str  # the rule that gave it (RULES or LAST3_RULES)
    rework: int


class OutcomeRule(NamedTuple):
    """`outcome_rule` and `inconclusive_outcome`: how a command sequence becomes what the API is told."""

    name: str = EVIDENCE
    inconclusive: str = SUCCESS

    def judged(self, commands: Sequence[str]) -> Judged:
        """The outcome of `commands` (before folding); rework is counted under either rule."""
        verdict = judge(commands)
        if self.name == LAST3:
            rule = "last3" if has_outcome_indicator(commands) else "last3-default"
            return Judged(infer_outcome(commands), rule, verdict.rework)
        return Judged(sent_outcome(verdict, self.inconclusive), verdict.rule, verdict.rework)


DEFAULT_OUTCOME_RULE = OutcomeRule()


def reason_of(rule: Optional[str]) -> Optional[str]:
    """The one-line reason of a rule's name (None for one this build does not know, or none)."""
    return _REASONS.get(rule) if rule else None


# -- a labeller that says one thing (doctor) -------------------------------------------

LOPSIDED_WINDOW = 200  # the newest sessions sent
LOPSIDED_SHARE = 0.97
LOPSIDED_FEWEST = 50  # fewer say too little to warn about


class Lopsided(NamedTuple):
    outcome: str
    times: int  # sessions with that outcome
    of: int
    rules: Tuple[Tuple[str, int], ...]  # the rules that gave it, most often first


def lopsided(judged: Sequence[Tuple[Optional[str], Optional[str]]]) -> Optional[Lopsided]:
    """Whether more than LOPSIDED_SHARE of `judged` ((outcome, rule) of sessions sent) share one outcome."""
    outcomes = Counter(outcome for outcome, _ in judged if outcome)
    total = sum(outcomes.values())
    if total < LOPSIDED_FEWEST:
        return None
    outcome, count = max(outcomes.items(), key=lambda item: (item[1], item[0]))
    if count <= LOPSIDED_SHARE * total:
        return None
    rules = Counter(rule or "-" for found, rule in judged if found == outcome)
    return Lopsided(outcome, count, total, tuple(sorted(rules.items(), key=lambda item: (-item[1], item[0]))))
