"""Delivering closed sessions to the procedural API, exactly once, in a thread of their own.

One module a job, each with its guarantee in its docstring:

    thread.py     the Deliverer thread: start, stop, wake, the outbox's order, the ledger before a POST
    learn_api.py  POST /learn: the only module that knows the API's paths, bodies and status codes
    health.py     the API's health (HEALTHY / SUSPECT / DOWN), its backoff, the parking rule; pure
    settle.py     the one writer of a settled session: outbox status, history entry, unusual judgement
    http.py       the bounded HTTP client: one deadline a request, a capped answer, no redirects
"""

from .thread import Deliverer

__all__ = ["Deliverer"]
