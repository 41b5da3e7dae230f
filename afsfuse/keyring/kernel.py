"""Tokens kept in the kernel's keyring, so that they outlive the daemon but never touch a
disk.

Each mount has a keyring of its own, `afsfuse:<mount key>`, linked into the user keyring of
the daemon's uid (root's, for /afs), which the kernel keeps as long as that uid has a
process.  Each token is a `user` key in it, described by its holder and cell, that the
kernel removes when the token expires.  Only the daemon's uid can read them.  A restarted
daemon (a crash and `Restart=on-failure`, or `systemctl restart`) takes them back; `unlog`
removes them.  The keys go with a reboot, as tokens do with OpenAFS.

The keyutils bindings are turkeyutils, the maintained fork of python-keyutils.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import time
from collections.abc import Callable, Iterator

import keyutils

from afsfuse.ctl.protocol import token_from_wire, token_to_wire
from afsfuse.keyring.pag import Keeper
from afsfuse.keyring.token import Token

log = logging.getLogger(__name__)

#: Possessor and owner may view, read, write, search, link and set attributes; no one else.
_PERMISSIONS = 0x3F3F0000
#: How the key that names a PAG's keeper is described: "keeper:<pag>".
_KEEPER = "keeper"


class KernelKeep:
    """Where a TokenStore keeps its tokens beyond the process."""

    def __init__(self, name: str, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.name = f"afsfuse:{name}"
        found = keyutils.search(
            keyutils.KEY_SPEC_USER_KEYRING, self.name.encode(), keyType=b"keyring"
        )
        #: The keyring's serial number (keyutils ships no types: its calls give Any).
        self._ring: int
        if found:
            self._ring = found
        else:
            self._ring = keyutils.add_key(
                self.name.encode(), b"", keyutils.KEY_SPEC_USER_KEYRING, keyType=b"keyring"
            )
            keyutils.set_perm(self._ring, _PERMISSIONS)

    @staticmethod
    def _description(holder: tuple[str, int], cell: str) -> bytes:
        kind, number = holder
        return f"{kind}:{number}:{cell.lower()}".encode()

    def save(self, holder: tuple[str, int], token: Token) -> None:
        """Keep token (replacing the holder's earlier one for its cell) until it expires."""
        lifetime = int(token.end - self._clock()) + 1
        if lifetime <= 0:
            return
        payload = json.dumps(token_to_wire(token)).encode()
        key = keyutils.add_key(self._description(holder, token.cell), payload, self._ring)
        keyutils.set_perm(key, _PERMISSIONS)
        keyutils.set_timeout(key, lifetime)

    def drop(self, holder: tuple[str, int], cells: list[str]) -> None:
        for cell in cells:
            key = keyutils.search(self._ring, self._description(holder, cell))
            if key:
                keyutils.unlink(key, self._ring)

    def load(self) -> Iterator[tuple[tuple[str, int], Token]]:
        """Every token still kept (the kernel has already dropped expired ones)."""
        for serial, description in self._keys():
            kind, number, _cell = description.split(":", 2)
            if kind == _KEEPER:
                continue
            try:
                token = token_from_wire(json.loads(keyutils.read_key(serial)))
            except (keyutils.Error, ValueError) as e:
                log.warning("key %d in %s skipped: %s", serial, self.name, type(e).__name__)
                continue
            yield (kind, int(number)), token

    # A PAG's keeper is kept beside its tokens: a restarted daemon knows the PAG again by
    # the keeper's pid and start time (pag.py).  Only numbers: nothing secret.

    def save_keeper(self, keeper: Keeper) -> None:
        payload = json.dumps([keeper.pid, keeper.start, keeper.uid, keeper.outer]).encode()
        key = keyutils.add_key(f"{_KEEPER}:{keeper.pag}:".encode(), payload, self._ring)
        keyutils.set_perm(key, _PERMISSIONS)

    def drop_keeper(self, pag: int) -> None:
        key = keyutils.search(self._ring, f"{_KEEPER}:{pag}:".encode())
        if key:
            keyutils.unlink(key, self._ring)

    def load_keepers(self) -> Iterator[Keeper]:
        for serial, description in self._keys():
            kind, number, _ = description.split(":", 2)
            if kind != _KEEPER:
                continue
            try:
                pid, start, uid, outer = json.loads(keyutils.read_key(serial))
                yield Keeper(int(number), int(pid), int(start), int(uid), outer)
            except (keyutils.Error, ValueError, TypeError) as e:
                log.warning("key %d in %s skipped: %s", serial, self.name, type(e).__name__)

    def _keys(self) -> Iterator[tuple[int, str]]:
        """(serial, description) of each user key in the keyring."""
        serials = keyutils.read_key(self._ring) or b""
        for (serial,) in struct.iter_unpack("=i", serials):
            try:
                key_type, _uid, _gid, _perm, description = (
                    keyutils.describe_key(serial).decode().split(";", 4)
                )
            except (keyutils.Error, ValueError) as e:
                log.warning("key %d in %s skipped: %s", serial, self.name, type(e).__name__)
                continue
            if key_type == "user" and description.count(":") >= 2:
                yield serial, description


def open_keep(name: str) -> KernelKeep | None:
    """The keep for the mount called name, or None (tokens then die with the daemon) where
    the kernel offers no keyring to this process."""
    try:
        return KernelKeep(name)
    except keyutils.Error as e:
        log.warning("no kernel keyring (%s): tokens will not outlive this daemon", e)
        return None


def forget_keep(name: str) -> None:
    """Remove the keep of the mount called name, with every token in it."""
    with contextlib.suppress(keyutils.Error):
        ring = keyutils.search(
            keyutils.KEY_SPEC_USER_KEYRING, f"afsfuse:{name}".encode(), keyType=b"keyring"
        )
        if ring:
            keyutils.unlink(ring, keyutils.KEY_SPEC_USER_KEYRING)
