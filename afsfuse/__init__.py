"""afsfuse: an AFS cache manager in Python."""

__version__ = "0.1.0"
