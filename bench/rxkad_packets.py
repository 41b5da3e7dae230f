"""Microbenchmark: CPU microseconds to seal and unseal one DATA packet through rxkad.

    .venv/bin/python bench/rxkad_packets.py [--size 1400] [--seconds 1]

Times RxkadClientConnection.seal and .unseal (what the Rx core calls per packet) at each
level, with the compiled packet code and with the pure-Python reference. CPU time
(time.process_time), so a busy machine does not inflate the figures much.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

from afsfuse.rx.rxkad import Level, RxkadClient


def per_call_us(action: Callable[[], object], seconds: float) -> float:
    """Best of three rounds of CPU time per call, in microseconds."""
    best = float("inf")
    for _ in range(3):
        calls = 0
        started = time.process_time()
        while (elapsed := time.process_time() - started) < seconds / 3:
            for _ in range(100):
                action()
            calls += 100
        best = min(best, elapsed / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1400, help="user bytes per packet")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()
    data = os.urandom(args.size)
    for backend in ("c", "python"):
        os.environ["AFSFUSE_FCRYPT"] = backend
        for level in Level:
            token = RxkadClient(os.urandom(8), bytes(64), 0, level)
            conn = token.new_connection(0x80000001, 0x1000)
            cksum, wire = conn.seal(3, 1, 9, data)
            assert conn.unseal(3, 1, 9, cksum, wire) == data
            seal = per_call_us(partial(conn.seal, 3, 1, 9, data), args.seconds)
            unseal = per_call_us(partial(conn.unseal, 3, 1, 9, cksum, wire), args.seconds)
            rate = args.size / unseal
            print(
                f"{backend:6s} {level.name.lower():5s}: seal {seal:8.2f} us, "
                f"unseal {unseal:8.2f} us per {args.size}-byte packet ({rate:.0f} MB/s unsealed)",
                flush=True,
            )


if __name__ == "__main__":
    main()
