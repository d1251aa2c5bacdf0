import pytest
from helpers import RecordingAPI


@pytest.fixture
def api():
    """A recording procedural API on 127.0.0.1, stopped after the test."""
    server = RecordingAPI().start()
    yield server
    server.stop()
