"""omnimemory-learner: learns workflow patterns from OmniMemory activity events."""

__version__ = "0.1.0"
