import os
import sys

# The shared real parts (tests/helpers.py, tests/writer.py) live one level up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The long forms (make soak): more kills, more events, an hour of soak.
LONG = os.environ.get("RELIABILITY_LONG") == "1"
