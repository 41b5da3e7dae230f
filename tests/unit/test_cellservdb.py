from __future__ import annotations

import logging

import pytest

from afsfuse.vl.cellservdb import (
    MAX_HOSTS_PER_CELL,
    CellServDBError,
    CellServer,
    cell_key,
    parse_cellalias,
    parse_cellservdb,
    parse_thiscell,
    read_cellservdb,
)

SAMPLE = """\
# A comment before any cell.

>grand.central.org      #GCO Public CellServDB 01 Jan 2024
18.9.48.14                      #grand.mit.edu
128.2.13.219                    #grand-opening.mit.edu
>Example.COM other.example.com  # linked to another cell
  192.0.2.1   #db1.example.com
[192.0.2.2]   #clone.example.com
>empty.example      #no servers at all
"""


def test_cells_comments_servers_in_order() -> None:
    cells = parse_cellservdb(SAMPLE)
    assert list(cells) == ["grand.central.org", "example.com", "empty.example"]
    gco = cells["grand.central.org"]
    assert gco.comment == "GCO Public CellServDB 01 Jan 2024"
    assert gco.linked_cell is None
    assert gco.servers == (
        CellServer("18.9.48.14", "grand.mit.edu"),
        CellServer("128.2.13.219", "grand-opening.mit.edu"),
    )
    example = cells["example.com"]
    assert example.name == "Example.COM"
    assert example.linked_cell == "other.example.com"
    assert example.comment == "linked to another cell"
    assert [(s.address, s.hostname, s.clone) for s in example.servers] == [
        ("192.0.2.1", "db1.example.com", False),
        ("192.0.2.2", "clone.example.com", True),
    ]
    assert cells["empty.example"].servers == ()


def test_junk_lines_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    text = (
        "10.0.0.9 #orphan.example\n"  # before any cell
        ">cell.example #c\n"
        "10.0.0.1 #ok.example\n"
        "not an address #x\n"
        "10.0.0.300 #bad-octet\n"
        "10.0.0.2\n"  # no #hostname
        "10.0.0.3 #\n"  # empty hostname
        ">\n"  # no cell name
        "10.0.0.4 #after-nameless\n"
    )
    with caplog.at_level(logging.WARNING, logger="afsfuse.vl.cellservdb"):
        cells = parse_cellservdb(text, "test-db")
    assert list(cells) == ["cell.example"]
    assert cells["cell.example"].servers == (CellServer("10.0.0.1", "ok.example"),)
    assert len(caplog.records) == 7
    assert all(r.getMessage().startswith("test-db:") for r in caplog.records)


def test_later_duplicate_cell_wins() -> None:
    cells = parse_cellservdb(
        ">a.example #first\n1.1.1.1 #one\n>b.example #b\n2.2.2.2 #two\n>A.example #second\n"
        "3.3.3.3 #three\n"
    )
    assert list(cells) == ["b.example", "a.example"]
    assert cells["a.example"].comment == "second"
    assert [s.address for s in cells["a.example"].servers] == ["3.3.3.3"]


def test_host_limit(caplog: pytest.LogCaptureFixture) -> None:
    hosts = "".join(f"10.1.0.{i} #h{i}\n" for i in range(1, 11))
    cells = parse_cellservdb(">big.example #many\n" + hosts)
    assert len(cells["big.example"].servers) == MAX_HOSTS_PER_CELL
    assert cells["big.example"].servers[-1].address == f"10.1.0.{MAX_HOSTS_PER_CELL}"
    assert "10 servers" in caplog.text


def test_read_file_and_keys(tmp_path) -> None:
    path = tmp_path / "CellServDB"
    path.write_text(">Cell.Example. #c\n10.2.0.1 #h\n")
    cells = read_cellservdb(path)
    assert cell_key("CELL.example.") in cells


def test_thiscell_and_cellalias() -> None:
    assert parse_thiscell("  example.com\n") == "example.com"
    assert parse_thiscell("\n") is None
    aliases = parse_cellalias(
        "# comment\ngrand.central.org gco\n\nexample.com ex # trailing\nbogus\n"
    )
    assert aliases == {"gco": "grand.central.org", "ex": "example.com"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", ": is empty"),
        (b" \n\t\n", ": is empty"),
        (b">a.example #a\n10.0.0.1 #h\n\x00\x01\x02", ":3: not a text file (byte 0x00)"),
        (bytes(range(256)), ":1: not a text file"),
        (b"# only a comment\n10.0.0.1 #orphan\n", ": no '>cell' line; not a CellServDB"),
    ],
)
def test_unusable_files_are_errors_naming_the_file(tmp_path, content: bytes, problem: str) -> None:
    path = tmp_path / "CellServDB"
    path.write_bytes(content)
    with pytest.raises(CellServDBError) as caught:
        read_cellservdb(path)
    assert str(caught.value).startswith(str(path)) and problem in str(caught.value)


def test_latin1_comments_and_crlf_are_text(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "CellServDB"
    path.write_bytes(b">b.example #Universit\xe4t\r\n10.0.0.1 #db.b.example\r\n")
    cells = read_cellservdb(path)
    assert cells["b.example"].servers == (CellServer("10.0.0.1", "db.b.example"),)
    assert not caplog.records


def test_entries_remember_their_line() -> None:
    cells = parse_cellservdb("# header\n>a.example #a\n10.0.0.1 #h\n\n>b.example #b\n")
    assert (cells["a.example"].line, cells["b.example"].line) == (2, 5)
