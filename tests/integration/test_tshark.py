"""Wireshark's Rx/AFS dissector reads our packets as well-formed Rx.

tshark captures on the cell's bridge while a small conversation runs (VL, PT, FS at rxnull
and rxkad crypt, and our answers to the fileserver's callback calls); then the capture must
hold no malformed Rx packet, and the DATA, ACK and callback-reply packets must be there.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from pathlib import Path

import pytest
import trio
from captures import Capture, tshark_read

from afsfuse.keyring import Token
from afsfuse.rx.interfaces.fs import FS, AFSFid, AFSStoreStatus
from afsfuse.rx.interfaces.pt import PT
from afsfuse.rx.interfaces.vl import VL
from afsfuse.rx.rxkad import Level, RxkadClient
from afsfuse.rx.security import RXNULL
from afsfuse.testing.cell import Cell

pytestmark = pytest.mark.cell

SIZE = 1024 * 1024
OPEN_ACL = b"2\n0\nsystem:administrators 127\nsystem:anyuser 63\n\0"
FILE_MODE = AFSStoreStatus(Mask=8, ClientModTime=0, Owner=0, Group=0, UnixModeBits=0o644, SegSize=0)
DIR_MODE = AFSStoreStatus(Mask=8, ClientModTime=0, Owner=0, Group=0, UnixModeBits=0o755, SegSize=0)
RX_DATA, RX_ACK, RX_CHALLENGE, RX_RESPONSE = 1, 2, 6, 7
CB_SERVICE = 1


async def conversation(cm, cell: Cell, admin: Token) -> None:
    """VL, PT and FS calls at rxnull and at rxkad crypt, with 1 MB stored and fetched."""
    endpoint = cm.endpoint
    vl = endpoint.connect((cell.db_server.addr, VL.port), VL.service_id)
    entry = await VL.GetEntryByNameU(vl, "test")
    root = AFSFid(Volume=entry.volumeId[0], Vnode=1, Unique=1)
    pt = endpoint.connect((cell.db_server.addr, PT.port), PT.service_id)
    ids = await PT.NameToID(pt, ["admin"])
    assert len(ids) == 1 and ids[0] > 0

    fs_addr = (cell.servers[0].addr, FS.port)
    anonymous = endpoint.connect(fs_addr, FS.service_id, RXNULL)
    crypt = endpoint.connect(
        fs_addr,
        FS.service_id,
        RxkadClient(admin.session_key, admin.ticket, admin.kvno, Level.CRYPT),
    )
    status = await FS.FetchStatus(anonymous, root)
    assert status.OutStatus.FileType == 2
    made = await FS.MakeDir(crypt, root, f"tshark-{secrets.token_hex(4)}", DIR_MODE)
    await FS.OldStoreACL(crypt, made.OutFid, OPEN_ACL)
    for conn in (anonymous, crypt):
        data = os.urandom(SIZE)
        created = await FS.CreateFile(conn, made.OutFid, f"f-{secrets.token_hex(4)}", FILE_MODE)
        await FS.StoreData64(conn, created.OutFid, FILE_MODE, 0, SIZE, SIZE, data=data)
        got, _ = await FS.FetchData64(conn, created.OutFid, 0, SIZE)
        assert got == data


async def test_tshark_decodes_our_rx_without_complaint(
    cm, cell: Cell, tokens: dict[str, Token], tmp_path: Path
) -> None:
    capture = Capture(cell.bridge, tmp_path / "rx.pcapng")
    try:
        await capture.started()
        with trio.fail_after(60):
            await conversation(cm, cell, tokens["admin"])
        await trio.sleep(0.5)  # the last ACKs reach the wire
    finally:
        capture.stop()

    our_port = str(cm.endpoint.port)
    bad = tshark_read(
        capture.path,
        "rx && (_ws.malformed || _ws.expert.severity >= error)",
        "frame.number",
        "_ws.expert.message",
    )
    assert bad == [], bad

    rows = tshark_read(
        capture.path,
        "rx",
        "udp.srcport",
        "udp.dstport",
        "rx.type",
        "rx.flags.client_init",
        "rx.serviceid",
        "rx.securityindex",
    )
    assert len(rows) > 1000
    ours = [r for r in rows if r[0] == our_port]
    theirs = [r for r in rows if r[1] == our_port]
    sent = Counter(int(r[2]) for r in ours)
    received = Counter(int(r[2]) for r in theirs)
    print(f"\n{len(rows)} Rx packets decoded; ours by type {dict(sent)}, theirs {dict(received)}")
    # 2 x 1 MB each way is about 1500 DATA packets from us; our ACKs answer theirs.
    assert sent[RX_DATA] > 1400 and sent[RX_ACK] > 20
    # rxkad's handshake, and both security classes on our packets.
    assert received[RX_CHALLENGE] >= 1 and sent[RX_RESPONSE] >= 1
    assert {"0", "2"} <= {r[5] for r in ours}
    # The fileserver called our callback service (TellMeAboutYourself and friends) and
    # our replies went back as server-side DATA: tshark names the service by port, and
    # ours is not 7001, so the Rx fields say who is who.
    their_calls = [r for r in theirs if r[2] == str(RX_DATA) and r[3] in ("1", "True")]
    our_replies = [r for r in ours if r[2] == str(RX_DATA) and r[3] in ("0", "False")]
    assert their_calls and all(r[4] == str(CB_SERVICE) for r in their_calls)
    assert len(our_replies) >= len(their_calls)
