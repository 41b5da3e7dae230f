"""AFS access control lists: the text FetchACL returns and StoreACL takes, and rights letters.

The text is `"<npos>\\n<nneg>\\n"`, then npos lines `"<name> <rights>\\n"` granting rights,
then nneg lines taking them away; rights are a decimal mask (the fileserver prints it as a
signed 32-bit number, so the user bits A..H may show as negative).  FetchACL's text ends
with a NUL.

Letters in the order `fs listacl` prints them: r read, l lookup, i insert, d delete,
w write, k lock, a administer, then the site-defined bits A..H.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from afsfuse.rx.interfaces.fs import (
    PRSFS_ADMINISTER,
    PRSFS_DELETE,
    PRSFS_INSERT,
    PRSFS_LOCK,
    PRSFS_LOOKUP,
    PRSFS_READ,
    PRSFS_WRITE,
)

_LETTERS = {
    "r": PRSFS_READ,
    "l": PRSFS_LOOKUP,
    "i": PRSFS_INSERT,
    "d": PRSFS_DELETE,
    "w": PRSFS_WRITE,
    "k": PRSFS_LOCK,
    "a": PRSFS_ADMINISTER,
    **{chr(ord("A") + i): 0x01000000 << i for i in range(8)},
}
#: `fs setacl`'s words for common sets of rights.
SHORTHANDS = {
    "read": PRSFS_READ | PRSFS_LOOKUP,
    "write": PRSFS_READ | PRSFS_LOOKUP | PRSFS_INSERT | PRSFS_DELETE | PRSFS_WRITE | PRSFS_LOCK,
    "all": PRSFS_READ
    | PRSFS_LOOKUP
    | PRSFS_INSERT
    | PRSFS_DELETE
    | PRSFS_WRITE
    | PRSFS_LOCK
    | PRSFS_ADMINISTER,
    "none": 0,
}
_MASK32 = 0xFFFFFFFF


def rights_to_letters(rights: int) -> str:
    """`0x7f` -> "rlidwka"; bits with no letter are not shown."""
    return "".join(letter for letter, bit in _LETTERS.items() if rights & bit)


def letters_to_rights(text: str) -> int:
    """ "rl" -> 9; also the words read, write, all and none.  ValueError for anything else."""
    if text in SHORTHANDS:
        return SHORTHANDS[text]
    rights = 0
    for letter in text:
        bit = _LETTERS.get(letter)
        if bit is None:
            raise ValueError(f"not an access right: {letter!r} in {text!r}")
        rights |= bit
    return rights


def _signed(rights: int) -> int:
    rights &= _MASK32
    return rights - (1 << 32) if rights & 0x80000000 else rights


@dataclass
class Acl:
    """Entries by name, in the order given; a name may appear on both sides."""

    positive: dict[str, int] = field(default_factory=dict)
    negative: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | bytes) -> Acl:
        """Parse ACL text (a trailing NUL is allowed); ValueError when it is malformed."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
        lines = text.rstrip("\0").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        try:
            npos, nneg = int(lines[0]), int(lines[1])
        except (IndexError, ValueError):
            raise ValueError("ACL text must start with the two entry counts") from None
        if npos < 0 or nneg < 0 or len(lines) != 2 + npos + nneg:
            raise ValueError(f"ACL text announces {npos}+{nneg} entries, has {len(lines) - 2}")
        acl = cls()
        for i, line in enumerate(lines[2:]):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"ACL entry is not 'name rights': {line!r}")
            try:
                rights = int(parts[1]) & _MASK32
            except ValueError:
                raise ValueError(f"ACL rights are not a number: {line!r}") from None
            (acl.positive if i < npos else acl.negative)[parts[0]] = rights
        return acl

    def format(self) -> str:
        """The text StoreACL takes (without the NUL); entries with no rights are left out,
        which is how `fs setacl NAME none` removes one."""
        for name in (*self.positive, *self.negative):
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"not an ACL entry name: {name!r}")
        positive = {n: r for n, r in self.positive.items() if r & _MASK32}
        negative = {n: r for n, r in self.negative.items() if r & _MASK32}
        lines = [str(len(positive)), str(len(negative))]
        lines += [f"{name} {_signed(r)}" for name, r in positive.items()]
        lines += [f"{name} {_signed(r)}" for name, r in negative.items()]
        return "\n".join(lines) + "\n"
