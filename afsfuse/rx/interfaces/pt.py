"""Protection service (PR): service 73 on UDP 7002 (`ptint.xg`)."""

from __future__ import annotations

from .. import xdr
from ..rpc import IN, OUT, Interface, Rpc

PR_MAXNAMELEN = 64

ANONYMOUSID = 32766
ANYUSERID = -101
AUTHUSERID = -102
SYSADMINID = -204

# A name in a list is a fixed char[64]: 256 bytes on the wire.
prname = xdr.chars(PR_MAXNAMELEN)
namelist = xdr.varray(prname)
idlist = xdr.varray(xdr.int32)
prlist = xdr.varray(xdr.int32)

prcheckentry = xdr.struct(
    "prcheckentry",
    flags=xdr.int32,
    id=xdr.int32,
    owner=xdr.int32,
    creator=xdr.int32,
    ngroups=xdr.int32,
    nusers=xdr.int32,
    count=xdr.int32,
    reserved=xdr.array(xdr.int32, 5),
    name=prname,
)

PR_ERROR_BASE = 267264
_PR_ERRORS = [
    ("PREXIST", "name already exists"),
    ("PRIDEXIST", "id already exists"),
    ("PRNOIDS", "no ids left"),
    ("PRDBFAIL", "protection database I/O failed"),
    ("PRNOENT", "no such user or group"),
    ("PRPERM", "permission denied by the protection server"),
    ("PRNOTGROUP", "not a group"),
    ("PRNOTUSER", "not a user"),
    ("PRBADNAM", "badly formed name"),
    ("PRBADARG", "argument out of range"),
    ("PRNOMORE", "may not create more groups"),
    ("PRDBBAD", "protection database needs rebuilding"),
    ("PRGROUPEMPTY", "owner may not be an empty group"),
    ("PRINCONSISTENT", "protection database inconsistent"),
    ("PRDBADDR", "bad protection database address"),
    ("PRTOOMANY", "too many elements"),
    ("PRNOMEM", "protection server out of memory"),
]
PR_ERROR_NAMES = {
    PR_ERROR_BASE + i: f"{name} ({text})" for i, (name, text) in enumerate(_PR_ERRORS)
}
PRNOENT = PR_ERROR_BASE + 4
PRPERM = PR_ERROR_BASE + 5

PT = Interface(
    "PT",
    service_id=73,
    port=7002,
    rpcs=[
        # Unknown names come back as ANONYMOUSID.
        Rpc("NameToID", 504, IN(nlist=namelist), OUT(ilist=idlist)),
        Rpc("IDToName", 505, IN(ilist=idlist), OUT(nlist=namelist)),
        Rpc("GetCPS", 508, IN(id=xdr.int32), OUT(elist=prlist, over=xdr.int32)),
        Rpc("ListEntry", 512, IN(id=xdr.int32), OUT(entry=prcheckentry)),
        Rpc("GetCPS2", 518, IN(id=xdr.int32, host=xdr.uint32), OUT(elist=prlist, over=xdr.int32)),
    ],
    errors=PR_ERROR_NAMES,
)
