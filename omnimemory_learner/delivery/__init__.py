"""Delivering closed sessions to the procedural API, exactly once, in a thread of their own.

One module a job, each with its guarantee in its docstring:

    thread.py     the Deliverer thread: start, stop, wake, the outbox's order
    run.py        one run of the thread: one session from the ledger's question and the POST to its record
    learn_api.py  POST /learn, GET /patterns: the only module that knows the API's paths, bodies and status codes
    health.py     the API's health (HEALTHY / SUSPECT / DOWN), its backoff, the parking rule; pure
    settle.py     the one writer of a settled session: outbox status, history entry, unusual judgement
    http.py       the bounded HTTP client: one deadline a request, a capped answer, no redirects
    relearn.py    reconciling with GET /patterns, teaching again what the API forgot, unanswered POSTs
    watch.py      one idle connection to the API: its drop and return say it restarted
"""

from .thread import Deliverer

__all__ = ["Deliverer"]
