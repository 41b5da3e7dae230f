"""Volume location service (VL): service 52 on UDP 7003 (`vldbint.xg`)."""

from __future__ import annotations

from .. import xdr
from ..rpc import IN, OUT, Interface, Rpc

VL_MAXNAMELEN = 65
OMAXNSERVERS = 8
NMAXNSERVERS = 13
MAXTYPES = 3

# Volume types, also the index into volumeId[].
RWVOL, ROVOL, BACKVOL = 0, 1, 2
ANYVOL = -1

# vldbentry.flags: which volumes exist, plus lock bits in the low byte.
VLF_RWEXISTS = 0x1000
VLF_ROEXISTS = 0x2000
VLF_BACKEXISTS = 0x4000
VLF_DFSFILESET = 0x8000
VLOP_MOVE = 0x10
VLOP_RELEASE = 0x20
VLOP_BACKUP = 0x40
VLOP_DELETE = 0x80
VLOP_DUMP = 0x100

# serverFlags[i]: what a site holds.
VLSF_NEWREPSITE = 0x01
VLSF_ROVOL = 0x02
VLSF_RWVOL = 0x04
VLSF_BACKVOL = 0x08
VLSF_UUID = 0x10
VLSF_DONTUSE = 0x20
VLSF_RWREPLICA = 0x40

# ListAddrByAttributes.Mask
VLADDR_IPADDR = 0x1
VLADDR_INDEX = 0x2
VLADDR_UUID = 0x4

_name = xdr.chars(VL_MAXNAMELEN)
_volname = xdr.string(VL_MAXNAMELEN)


def _spares(first: int, last: int) -> dict[str, xdr.Codec]:
    return {f"spares{i}": xdr.int32 for i in range(first, last + 1)}


# Server addresses are IPv4 values (host-order valued, so natural octet order on the wire).
# rxgen declares some of them afs_int32; the bits are the same, and unsigned reads better.
vldbentry = xdr.struct(
    "vldbentry",
    name=_name,
    spares3=xdr.int32,
    nServers=xdr.int32,
    serverNumber=xdr.array(xdr.uint32, OMAXNSERVERS),
    serverPartition=xdr.array(xdr.int32, OMAXNSERVERS),
    serverFlags=xdr.array(xdr.int32, OMAXNSERVERS),
    volumeId=xdr.array(xdr.uint32, MAXTYPES),
    cloneId=xdr.int32,
    flags=xdr.int32,
)

nvldbentry = xdr.struct(
    "nvldbentry",
    name=_name,
    nServers=xdr.int32,
    serverNumber=xdr.array(xdr.uint32, NMAXNSERVERS),
    serverPartition=xdr.array(xdr.int32, NMAXNSERVERS),
    serverFlags=xdr.array(xdr.int32, NMAXNSERVERS),
    volumeId=xdr.array(xdr.uint32, MAXTYPES),
    cloneId=xdr.int32,
    flags=xdr.int32,
    matchindex=xdr.int32,
    **_spares(2, 9),
)

# serverNumber[i] is a fileserver UUID when serverFlags[i] has VLSF_UUID; otherwise its
# time_low is the server's IPv4 address.
uvldbentry = xdr.struct(
    "uvldbentry",
    name=_name,
    nServers=xdr.int32,
    serverNumber=xdr.array(xdr.afsUUID, NMAXNSERVERS),
    serverUnique=xdr.array(xdr.int32, NMAXNSERVERS),
    serverPartition=xdr.array(xdr.int32, NMAXNSERVERS),
    serverFlags=xdr.array(xdr.int32, NMAXNSERVERS),
    volumeId=xdr.array(xdr.uint32, MAXTYPES),
    cloneId=xdr.int32,
    flags=xdr.int32,
    **_spares(1, 9),
)

ListAddrByAttributes = xdr.struct(
    "ListAddrByAttributes",
    Mask=xdr.int32,
    ipaddr=xdr.uint32,
    index=xdr.int32,
    spare1=xdr.int32,
    uuid=xdr.afsUUID,
)

bulkaddrs = xdr.varray(xdr.uint32)

VL_ERROR_BASE = 363520
_VL_ERRORS = [
    ("IDEXIST", "volume id already in the VLDB"),
    ("IO", "VLDB I/O error"),
    ("NAMEEXIST", "volume name already in the VLDB"),
    ("CREATEFAIL", "VLDB entry creation failed"),
    ("NOENT", "no such volume in the VLDB"),
    ("EMPTY", "VLDB is empty"),
    ("ENTDELETED", "VLDB entry was deleted"),
    ("BADNAME", "illegal volume name"),
    ("BADINDEX", "index out of range"),
    ("BADVOLTYPE", "bad volume type"),
    ("BADSERVER", "bad server number"),
    ("BADPARTITION", "bad partition number"),
    ("REPSFULL", "no room for more replication sites"),
    ("NOREPSERVER", "no such replication site"),
    ("DUPREPSERVER", "replication site already present"),
    ("RWNOTFOUND", "parent RW entry not found"),
    ("BADREFCOUNT", "bad reference count"),
    ("SIZEEXCEEDED", "too many entries for the reply"),
    ("BADENTRY", "bad VLDB entry"),
    ("BADVOLIDBUMP", "bad volume id increment"),
    ("IDALREADYHASHED", "RO/BK id already hashed"),
    ("ENTRYLOCKED", "VLDB entry is locked"),
    ("BADVOLOPER", "bad volume operation"),
    ("BADRELLOCKTYPE", "bad release lock type"),
    ("RERELEASE", "previous release was aborted"),
    ("BADSERVERFLAG", "bad site flag"),
    ("PERM", "permission denied by the VL server"),
    ("NOMEM", "VL server out of memory"),
    ("BADVERSION", "wrong VLDB version"),
    ("INDEXERANGE", "index out of range"),
    ("MULTIPADDR", "servers share an address"),
    ("BADMASK", "bad attribute mask"),
    ("DBBAD", "VLDB needs rebuilding"),
]
VL_ERROR_NAMES = {
    VL_ERROR_BASE + i: f"VL_{name} ({text})" for i, (name, text) in enumerate(_VL_ERRORS)
}
VL_NOENT = VL_ERROR_BASE + 4
VL_BADNAME = VL_ERROR_BASE + 7
VL_PERM = VL_ERROR_BASE + 26
VL_DBBAD = VL_ERROR_BASE + 32

VL = Interface(
    "VL",
    service_id=52,
    port=7003,
    rpcs=[
        Rpc("GetEntryByID", 503, IN(Volid=xdr.uint32, voltype=xdr.int32), OUT(entry=vldbentry)),
        Rpc("GetEntryByNameO", 504, IN(volumename=_volname), OUT(entry=vldbentry)),
        Rpc("ProbeServer", 514),
        Rpc("GetEntryByIDN", 518, IN(Volid=xdr.uint32, voltype=xdr.int32), OUT(entry=nvldbentry)),
        Rpc("GetEntryByNameN", 519, IN(volumename=_volname), OUT(entry=nvldbentry)),
        Rpc("GetEntryByNameU", 527, IN(volumename=_volname), OUT(entry=uvldbentry)),
        Rpc(
            "GetAddrsU",
            533,
            IN(inaddr=ListAddrByAttributes),
            OUT(uuidp1=xdr.afsUUID, uniquifier=xdr.int32, nentries=xdr.int32, blkaddrs=bulkaddrs),
        ),
    ],
    aliases={"GetEntryByName": "GetEntryByNameO"},
    errors=VL_ERROR_NAMES,
)
