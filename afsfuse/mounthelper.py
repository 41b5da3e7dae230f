"""The mount helper form of `afsfuse`: `afsfuse SOURCE MOUNTPOINT [-o OPTIONS]`.

This is how mount.fuse3 runs a filesystem of type `fuse.afsfuse` (from fstab, `mount -a`
or `mount -t fuse.afsfuse`), so an fstab line such as

    none  /afs  fuse.afsfuse  _netdev,cache-size=2G  0  0

mounts AFS.  Each `-o` option is a long option of `afsfuse mount` without its dashes
(`cache-size=2G`, `thiscell=example.com`, `no-xattrs`, `sysname=NAME` repeated for a list);
the options mount(8) and mount.fuse3 add on their own, such as `rw` or `nosuid`, are
accepted and left to them.  SOURCE is ignored, as the cells come from the configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

#: `afsfuse mount` options that take a value, and those that are flags.
VALUE_OPTIONS = frozenset(
    (
        "config", "openafs-dir", "kafs-config", "cellservdb", "thiscell", "cache-dir",
        "cache-size", "port", "sysname", "security", "max-tasks", "dns-server", "dead-time",
        "server-timeout", "store-retry", "log-file",
    )
)  # fmt: skip
FLAG_OPTIONS = frozenset(("no-xattrs", "no-dns", "debug", "foreground"))
#: Generic mount options, meant for mount(8), mount.fuse3 or the kernel, that reach a
#: helper all the same.  afsfuse mounts nosuid,nodev,noatime in any case.
GENERIC_OPTIONS = frozenset(
    (
        "rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users",
        "owner", "group", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime",
        "noatime", "relatime", "strictatime", "diratime", "nodiratime", "async",
    )
)  # fmt: skip
COMMANDS = frozenset(("mount", "check-config"))


def helper_form(argv: Sequence[str]) -> bool:
    """Whether argv is `SOURCE MOUNTPOINT ...` rather than a command or an option."""
    return len(argv) >= 2 and argv[0] not in COMMANDS and not argv[0].startswith("-")


def helper_argv(argv: Sequence[str]) -> list[str]:
    """The `afsfuse mount` command line that a helper call stands for."""
    _source, mountpoint, *rest = argv
    result = ["mount", mountpoint]
    words = iter(rest)
    for word in words:
        if word == "-o":
            text = next(words, None)
            if text is None:
                raise ValueError("-o needs a list of options")
            result += _options(text)
        elif word.startswith("-o"):
            result += _options(word[2:])
        elif word == "-f":
            result.append("--foreground")
        elif word in ("-n", "-s", "-v"):
            continue  # no mtab, sloppy, verbose: nothing for afsfuse to do
        else:
            raise ValueError(f"unknown mount helper argument {word!r}")
    return result


def _options(text: str) -> list[str]:
    result = []
    for option in filter(None, text.split(",")):
        name, equals, value = option.partition("=")
        name = name.replace("_", "-") if name != "_netdev" else name
        if name in VALUE_OPTIONS and equals:
            result.append(f"--{name}={value}")
        elif name in FLAG_OPTIONS and not equals:
            result.append(f"--{name}")
        elif name in GENERIC_OPTIONS or name.startswith("x-") or name == "comment":
            continue
        elif name == "ro":
            raise ValueError("afsfuse has no read-only mounts; drop the ro option")
        else:
            raise ValueError(
                f"unknown mount option {option!r}: afsfuse takes the long options of "
                "`afsfuse mount` (see afsfuse(8))"
            )
    return result
