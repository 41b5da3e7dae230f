"""Microbenchmark: CPU microseconds per rxkad crypt-level DATA packet in the fcrypt module.

    .venv/bin/python bench/fcrypt_speed.py [--size 1412] [--seconds 2]

Times the compiled seal_packet and unseal_packet directly (no rxkad connection objects
around them), so the figure is the cipher plus the call, which is what a crypt-level
transfer pays per packet on top of the Rx engine.  Also prints the equivalent MB/s of user
data and the CPU seconds per 64 MiB.  CPU time (time.process_time), best of three rounds,
so a busy machine does not inflate the figures much.
"""

from __future__ import annotations

import argparse
import os
import sys

from rxkad_packets import per_call_us

from afsfuse.rx import fcrypt

_CRYPT = 2
_MIB_64 = 64 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1412, help="user bytes per packet")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args()
    backend = fcrypt.ACCELERATOR
    if backend is None:
        sys.exit("the fcrypt accelerator is not built")
    context = fcrypt.packet_context(os.urandom(8), os.urandom(8))
    data = os.urandom(args.size)
    call_number, channel, seq = 0x1234, 1, 7
    cksum, wire = backend.seal_packet(context, _CRYPT, call_number, channel, seq, data)

    def seal() -> object:
        return backend.seal_packet(context, _CRYPT, call_number, channel, seq, data)

    def unseal() -> object:
        return backend.unseal_packet(context, _CRYPT, call_number, channel, seq, cksum, True, wire)

    assert unseal() == data
    for name, action in (("seal", seal), ("unseal", unseal)):
        us = per_call_us(action, args.seconds)
        rate = args.size / us
        cpu_64 = _MIB_64 / args.size * us / 1e6
        print(f"{name:7} {us:7.2f} us/packet  {rate:7.1f} MB/s  {cpu_64:5.2f} CPU s per 64 MiB")


if __name__ == "__main__":
    main()
