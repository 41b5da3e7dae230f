"""Inode numbers for what the kernel sees: AFS vnodes and the synthetic /afs tree.

An inode stands for one node until the kernel forgets every lookup of it.  AFS vnodes (and
mount points) get numbers derived from their fid, so a file keeps its number when the kernel
forgets it and looks it up again (tar, find and rsync compare st_ino over time, and a fid is
never reused); synthetic nodes, and the very rare fid whose number is taken, count from 2.
The same node key always maps to the same live inode, so hard links and repeated lookups
agree.

The table also remembers which names the kernel was allowed to cache in a directory
(entries handed out with a non-zero entry timeout), so that a callback break on that
directory can drop exactly those names from the kernel's dentry cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pyfuse3

from afsfuse.cache.base import FidKey  # the class AfsFid names, for isinstance
from afsfuse.fs.mntpt import MountTarget, VolumeType
from afsfuse.fs.vnode import AfsFid

ROOT_INODE: int = pyfuse3.ROOT_INODE
#: Fid-derived numbers lie in [2**32, 2**63), away from the counter's.
_DERIVED_BASE = 1 << 32
_DERIVED_MASK = (1 << 63) - 1


@dataclass(eq=False)
class Node:
    inode: int
    #: Kernel references (lookup replies not yet forgotten).
    lookups: int = field(default=0, init=False)
    #: The directory the kernel last found this node in: what readdir shows as `..`.
    parent: int = field(default=0, init=False)

    @property
    def key(self) -> Hashable:
        raise NotImplementedError


@dataclass(eq=False)
class RootNode(Node):
    """The dynamic root (/afs): cells, their RW aliases, alias symlinks, `.:mount`."""

    @property
    def key(self) -> Hashable:
        return ("root",)


@dataclass(eq=False)
class MountDirNode(Node):
    """`.:mount`: lists nothing; `<cell>:<volume>` names in it are volume roots."""

    @property
    def key(self) -> Hashable:
        return ("mountdir",)


@dataclass(eq=False)
class LinkNode(Node):
    """A synthetic symlink in the dynamic root (a cell alias)."""

    name: str
    target: bytes

    @property
    def key(self) -> Hashable:
        return ("link", self.name)


@dataclass(frozen=True)
class MountSpec:
    """Where a mount point leads, and what decides which type of its volume is used."""

    target: MountTarget
    #: The cell the target volume is in.
    cell: str
    #: The type of the volume holding the mount point (dynamic ones count as read-only).
    parent: VolumeType
    same_cell: bool
    #: The mount point's text without the trailing '.', as `fs lsmount` shows it.
    text: str


@dataclass(eq=False)
class MountNode(Node):
    """A mount point, shown as a directory whose contents are the target volume's root.

    `source` is the mount point's own vnode (None for the synthetic ones of /afs and
    `.:mount`); its status gives the directory's attributes, so a stat never touches the
    target volume (fakestat).  `root` is the target's root fid once resolved.
    """

    spec: MountSpec | None = None
    source: AfsFid | None = None
    root: AfsFid | None = None

    @property
    def key(self) -> Hashable:
        return ("mount", self.source) if self.source is not None else ("mount", self.spec)


@dataclass(eq=False)
class FileNode(Node):
    """An AFS vnode shown as itself: file, directory or symbolic link."""

    fid: AfsFid

    @property
    def key(self) -> Hashable:
        return ("fid", self.fid)


N = TypeVar("N", bound=Node)


class InodeTable:
    def __init__(self) -> None:
        self.root = RootNode(ROOT_INODE)
        self.root.parent = ROOT_INODE  # as on a filesystem's own root
        self._nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._by_key: dict[Hashable, Node] = {self.root.key: self.root}
        self._next = ROOT_INODE + 1
        #: parent inode -> names the kernel may cache there.
        self._cached_names: dict[int, set[bytes]] = {}
        self._mounts: set[MountNode] = set()

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def intern(self, key: Hashable, make: Callable[[int], N]) -> N:
        """The live node for `key`, or a new one made by `make(inode)`.  Not counted as a
        lookup until `referenced`."""
        node = self._by_key.get(key)
        if node is None:
            node = make(self._number_for(key))
            assert node.key == key, (node.key, key)
            self._nodes[node.inode] = node
            self._by_key[key] = node
            if isinstance(node, MountNode):
                self._mounts.add(node)
        return node  # type: ignore[return-value]

    def _number_for(self, key: Hashable) -> int:
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], FidKey):
            digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
            number = int.from_bytes(digest, "little") & _DERIVED_MASK | _DERIVED_BASE
            if number not in self._nodes:
                return number
        number = self._next
        self._next += 1
        return number

    def referenced(self, node: Node) -> None:
        """The kernel received an entry for `node` (lookup reply or readdirplus entry)."""
        node.lookups += 1

    def forget(self, inode: int, count: int) -> None:
        node = self._nodes.get(inode)
        if node is None or node is self.root:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self._nodes[inode]
            if self._by_key.get(node.key) is node:
                del self._by_key[node.key]
            self._cached_names.pop(inode, None)
            self._mounts.discard(node)

    def note_cached_name(self, parent: int, name: bytes) -> None:
        self._cached_names.setdefault(parent, set()).add(name)

    def take_cached_names(self, parent: int) -> set[bytes]:
        """The names the kernel may hold under `parent`, forgotten here (they are about to
        be invalidated)."""
        return self._cached_names.pop(parent, set())

    def nodes(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def for_fid(self, fid: AfsFid) -> list[Node]:
        """Live nodes whose attributes or contents come from `fid`: the file itself, a mount
        point whose vnode it is, and mount points whose target root it is."""
        found: list[Node] = []
        node = self._by_key.get(("fid", fid))
        if node is not None:
            found.append(node)
        node = self._by_key.get(("mount", fid))
        if node is not None:
            found.append(node)
        found += [m for m in self._mounts if m.root == fid]
        return found

    def mounts(self) -> list[MountNode]:
        return list(self._mounts)
