"""The benchmark's "on the server" bookkeeping: what a tar x leaves, and how the passes over
listings and statuses decide that all is there; and its parallel programs."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from onserver import Expected, Progress
from workloads import WorkloadFailed, run_all

from afsfuse.fs.dir import DirEntry
from afsfuse.rx.interfaces.fs import AFSFid


def _tarball(path: Path) -> None:
    with tarfile.open(path, "w") as archive:
        for name, kind, data, target in (
            ("lib", tarfile.DIRTYPE, b"", ""),
            ("lib/os.py", tarfile.REGTYPE, b"import sys\n", ""),
            ("lib/json", tarfile.DIRTYPE, b"", ""),
            ("lib/json/__init__.py", tarfile.REGTYPE, b"", ""),
            ("lib/json/again.py", tarfile.LNKTYPE, b"", "lib/os.py"),
            ("lib/link.py", tarfile.SYMTYPE, b"", "os.py"),
        ):
            member = tarfile.TarInfo(name)
            member.type, member.size, member.linkname = kind, len(data), target
            archive.addfile(member, io.BytesIO(data))


def test_tar_expects_files_at_their_size_and_every_directory(tmp_path: Path) -> None:
    _tarball(tmp_path / "t.tar")
    expected = Expected.from_tar(tmp_path / "t.tar", "bench/tar-x")
    assert expected.files == {
        "bench/tar-x/lib/os.py": 11,
        "bench/tar-x/lib/json/__init__.py": 0,
        "bench/tar-x/lib/json/again.py": 11,  # a hard link: its target's size
        "bench/tar-x/lib/link.py": None,
    }
    assert expected.dirs == {"", "bench", "bench/tar-x", "bench/tar-x/lib", "bench/tar-x/lib/json"}


def _listing(*names: tuple[str, int]) -> dict[bytes, DirEntry]:
    return {b".": DirEntry(1, 1), **{n.encode(): DirEntry(v, v + 100) for n, v in names}}


def test_passes_walk_down_and_wait_for_each_file_length() -> None:
    progress = Progress(Expected({"bench/c/f0": 100, "bench/c/f1": 100, "bench/w": 7}))
    progress.root(AFSFid(5, 1, 1))
    assert progress.to_list() == [("", AFSFid(5, 1, 1))]
    progress.listed("", _listing(("bench", 3), ("other", 9)))
    assert progress.to_list() == [("bench", AFSFid(5, 3, 103))]
    progress.listed("bench", _listing(("c", 4)))  # w not there yet
    progress.listed("bench/c", _listing(("f0", 6), ("f1", 8)))
    assert [d for d, _ in progress.to_list()] == ["bench"]
    assert progress.to_stat() == [("bench/c/f0", AFSFid(5, 6, 106)),
                                  ("bench/c/f1", AFSFid(5, 8, 108))]  # fmt: skip
    progress.status("bench/c/f0", 100)
    progress.status("bench/c/f1", 0)  # created, its data not stored yet
    assert not progress.done
    assert progress.summary() == "1 of 3 files complete, 2 of 3 directories whole"
    progress.listed("bench", _listing(("c", 4), ("w", 10)))
    assert progress.to_list() == []
    assert [p for p, _ in progress.to_stat()] == ["bench/c/f1", "bench/w"]
    progress.status("bench/c/f1", 100)
    progress.status("bench/w", 7)
    assert progress.done and progress.to_stat() == []


def test_a_symbolic_link_needs_only_to_exist() -> None:
    progress = Progress(Expected({"l": None}))
    progress.root(AFSFid(5, 1, 1))
    progress.listed("", _listing(("l", 2)))
    progress.status("l", 5)
    assert progress.done


def test_run_all_returns_each_output_in_order() -> None:
    outs = run_all([["sh", "-c", "sleep 0.2; echo one"], ["echo", "two"]])
    assert outs == ["one\n", "two\n"]


def test_run_all_fails_with_the_failing_programs_words() -> None:
    with pytest.raises(WorkloadFailed, match="sh exit 3: no such thing"):
        run_all([["true"], ["sh", "-c", "echo no such thing >&2; exit 3"]])
