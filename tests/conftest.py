import json

import original_api
import pytest
from helpers import RecordingAPI


@pytest.fixture
def api():
    """A recording procedural API on 127.0.0.1, stopped after the test."""
    server = RecordingAPI().start()
    yield server
    server.stop()


@pytest.fixture
def bodies(monkeypatch):
    """Every POST /learn body the stand-in reads, as sent (JSON)."""
    seen = []
    read = original_api.read_learn_body

    def recording(raw):
        seen.append(json.loads(raw))
        return read(raw)

    monkeypatch.setattr(original_api, "read_learn_body", recording)
    return seen
