"""Counters of what the cache manager did, for `afsfuse-ctl stats` and for tests that prove
a result came from the cache rather than the network."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    #: Fileserver and VL RPCs made, by name ("FS.FetchStatus", "VL.GetEntryByNameU").
    rpcs: Counter[str] = field(default_factory=Counter)
    #: RPCs that ended in an error, by name.
    rpc_errors: Counter[str] = field(default_factory=Counter)
    #: Status served without a FetchStatus (callback held) / fetched.
    status_hits: int = 0
    status_misses: int = 0
    #: File chunks and directory blobs served from the disk cache / fetched.
    data_hits: int = 0
    data_misses: int = 0
    bytes_fetched: int = 0
    bytes_served: int = 0
    #: Bytes sent to fileservers by StoreData64.
    bytes_stored: int = 0
    callbacks_received: int = 0
    #: Unsent data set aside because another client changed the file (cache/leftovers.py).
    leftovers: int = 0
    #: Times rotation moved on to another site, waited on a busy volume, re-read the VLDB.
    failovers: int = 0
    busy_waits: int = 0
    vldb_refreshes: int = 0
    #: Times malloc was asked to give back what freed chunks left (afsfuse/malloc.py).
    memory_trims: int = 0

    def count_rpc(self, name: str) -> None:
        self.rpcs[name] += 1

    def snapshot(self) -> dict[str, object]:
        """Plain values, for printing and for comparing before/after in tests."""
        out: dict[str, object] = {
            name: value for name, value in vars(self).items() if not isinstance(value, Counter)
        }
        out["rpcs"] = dict(self.rpcs)
        out["rpc_errors"] = dict(self.rpc_errors)
        return out

    def format(self) -> str:
        """Human-readable lines, one counter per line."""
        lines = [f"{name}: {value}" for name, value in self.snapshot().items() if name[:3] != "rpc"]
        lines += [f"rpc {name}: {n}" for name, n in sorted(self.rpcs.items())]
        lines += [f"rpc error {name}: {n}" for name, n in sorted(self.rpc_errors.items())]
        return "\n".join(lines)
