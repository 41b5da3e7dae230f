"""The AFS RPC interfaces a cache manager speaks, declared once for client and server.

Importing any of them imports all, so every service's error names are registered
wherever an abort code is printed.
"""

from . import cb, fs, pt, rmtsys, vl

__all__ = ["cb", "fs", "pt", "rmtsys", "vl"]
