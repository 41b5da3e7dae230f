"""File server (RXAFS): service 1 on UDP 7000 (`afsint.xg`, `common.xg`)."""

from __future__ import annotations

import errno
import os

from .. import xdr
from ..rpc import IN, OUT, FetchSplit, Interface, Rpc, StoreSplit

AFSNAMEMAX = 256
AFSPATHMAX = 1024
AFSOPAQUEMAX = 1024
AFSCBMAX = 50
AFSCAPABILITIESMAX = 196

# AFSFetchStatus.FileType
FILE_INVALID, FILE_FILE, FILE_DIRECTORY, FILE_SYMLINK = 0, 1, 2, 3

# AFSCallBack.CallBackType
CB_EXCLUSIVE, CB_SHARED, CB_DROPPED = 1, 2, 3
CALLBACK_VERSION = 1

# AFSStoreStatus.Mask
AFS_SETMODTIME = 1
AFS_SETOWNER = 2
AFS_SETGROUP = 4
AFS_SETMODE = 8
AFS_SETSEGSIZE = 16
AFS_FSYNC = 1024

# AFSStoreVolumeStatus.Mask
AFS_SETMINQUOTA = 1
AFS_SETMAXQUOTA = 2

# SetLock types
LOCK_READ, LOCK_WRITE = 0, 1
AFS_LOCKWAIT = 300

# Access rights (CallerAccess, AnonymousAccess, ACL entries)
PRSFS_READ = 0x01
PRSFS_WRITE = 0x02
PRSFS_INSERT = 0x04
PRSFS_LOOKUP = 0x08
PRSFS_DELETE = 0x10
PRSFS_LOCK = 0x20
PRSFS_ADMINISTER = 0x40

# GetCapabilities word 0
VICED_CAPABILITY_ERRORTRANS = 0x1
VICED_CAPABILITY_64BITFILES = 0x2
VICED_CAPABILITY_WRITELOCKACL = 0x4
VICED_CAPABILITY_SANEACLS = 0x8

AFSFid = xdr.struct("AFSFid", Volume=xdr.uint32, Vnode=xdr.uint32, Unique=xdr.uint32)

# ExpirationTime is relative seconds from when the server answered.
AFSCallBack = xdr.struct(
    "AFSCallBack", CallBackVersion=xdr.uint32, ExpirationTime=xdr.uint32, CallBackType=xdr.uint32
)

# spare1 is the volume's creation time; the rest are zero.
AFSVolSync = xdr.struct("AFSVolSync", **{f"spare{i}": xdr.uint32 for i in range(1, 7)})

# 21 words.  Length and DataVersion are split in two (Length_hi, dataVersionHigh); for a
# directory, ParentVnode/ParentUnique are the directory's own.  In InlineBulkStatus an
# entry with errorCode set stands for a fid that failed.  lockCount -1 (0xffffffff) is a
# write lock.
AFSFetchStatus = xdr.struct(
    "AFSFetchStatus",
    InterfaceVersion=xdr.uint32,
    FileType=xdr.uint32,
    LinkCount=xdr.uint32,
    Length=xdr.uint32,
    DataVersion=xdr.uint32,
    Author=xdr.uint32,
    Owner=xdr.uint32,
    CallerAccess=xdr.uint32,
    AnonymousAccess=xdr.uint32,
    UnixModeBits=xdr.uint32,
    ParentVnode=xdr.uint32,
    ParentUnique=xdr.uint32,
    ResidencyMask=xdr.uint32,
    ClientModTime=xdr.uint32,
    ServerModTime=xdr.uint32,
    Group=xdr.uint32,
    SyncCounter=xdr.uint32,
    dataVersionHigh=xdr.uint32,
    lockCount=xdr.uint32,
    Length_hi=xdr.uint32,
    errorCode=xdr.uint32,
)

AFSStoreStatus = xdr.struct(
    "AFSStoreStatus",
    Mask=xdr.uint32,
    ClientModTime=xdr.uint32,
    Owner=xdr.uint32,
    Group=xdr.uint32,
    UnixModeBits=xdr.uint32,
    SegSize=xdr.uint32,
)

AFSFetchVolumeStatus = xdr.struct(
    "AFSFetchVolumeStatus",
    Vid=xdr.int32,
    ParentId=xdr.int32,
    Online=xdr.char,
    InService=xdr.char,
    Blessed=xdr.char,
    NeedsSalvage=xdr.char,
    Type=xdr.int32,
    MinQuota=xdr.int32,
    MaxQuota=xdr.int32,
    BlocksInUse=xdr.int32,
    PartBlocksAvail=xdr.int32,
    PartMaxBlocks=xdr.int32,
)

AFSStoreVolumeStatus = xdr.struct(
    "AFSStoreVolumeStatus", Mask=xdr.int32, MinQuota=xdr.int32, MaxQuota=xdr.int32
)

AFSOpaque = xdr.opaque(AFSOPAQUEMAX)
AFSCBFids = xdr.varray(AFSFid, AFSCBMAX)
AFSCBs = xdr.varray(AFSCallBack, AFSCBMAX)
AFSBulkStats = xdr.varray(AFSFetchStatus, AFSCBMAX)
Capabilities = xdr.varray(xdr.uint32, AFSCAPABILITIESMAX)
AFS_CollData = xdr.varray(xdr.int32, 1024)
ViceStatistics64 = xdr.varray(xdr.uint64, 16)

_name = xdr.string(AFSNAMEMAX)
_path = xdr.string(AFSPATHMAX)
_opaque_text = xdr.string(AFSOPAQUEMAX)

# Volume and server error codes (`src/util/errors.h`) and how a client should react: see
# afs-protocol-facts.md 3.4.
VSALVAGE = 101
VNOVNODE = 102
VNOVOL = 103
VVOLEXISTS = 104
VNOSERVICE = 105
VOFFLINE = 106
VONLINE = 107
VDISKFULL = 108
VOVERQUOTA = 109
VBUSY = 110
VMOVED = 111
VIO = 112
VSALVAGING = 113
VRESTRICTED = 120
VRESTARTING = -100  # same code as RX_RESTARTING, which already names it
VICECONNBAD = 1234
VICETOKENDEAD = 1235

VOLUME_ERROR_NAMES = {
    VSALVAGE: "VSALVAGE (volume needs salvage)",
    VNOVNODE: "VNOVNODE (no such vnode)",
    VNOVOL: "VNOVOL (volume not attached or does not exist)",
    VVOLEXISTS: "VVOLEXISTS (volume already exists)",
    VNOSERVICE: "VNOSERVICE (volume not in service)",
    VOFFLINE: "VOFFLINE (volume offline)",
    VONLINE: "VONLINE (volume already online)",
    VDISKFULL: "VDISKFULL (partition full)",
    VOVERQUOTA: "VOVERQUOTA (volume quota exceeded)",
    VBUSY: "VBUSY (volume busy, try again)",
    VMOVED: "VMOVED (volume moved)",
    VIO: "VIO (vnode temporarily inaccessible)",
    VSALVAGING: "VSALVAGING (volume being salvaged)",
    VRESTRICTED: "VRESTRICTED (volume restricted)",
    VICECONNBAD: "VICECONNBAD (bad connection)",
    VICETOKENDEAD: "VICETOKENDEAD (token expired)",
}

# The "uae" com_err table (unified_afs.et): once a cache manager advertises
# CLIENT_CAPABILITY_ERRORTRANS, fileservers send errno e as UAE_BASE + e - 1.
UAE_BASE = 49733376
UAE_COUNT = 134
UAE_ERROR_NAMES = {
    UAE_BASE + e - 1: f"UAE{errno.errorcode[e][1:]} ({os.strerror(e)})"
    for e in range(1, UAE_COUNT + 1)
    if e in errno.errorcode
}

_fid = {"Fid": AFSFid}
_status_sync = {"OutStatus": AFSFetchStatus, "Sync": AFSVolSync}
_status_cb_sync = {"OutStatus": AFSFetchStatus, "CallBack": AFSCallBack, "Sync": AFSVolSync}
_bulk = (IN(FidsArray=AFSCBFids), OUT(StatArray=AFSBulkStats, CBArray=AFSCBs, Sync=AFSVolSync))

FS = Interface(
    "FS",
    service_id=1,
    port=7000,
    rpcs=[
        Rpc(
            "FetchData",
            130,
            IN(Fid=AFSFid, Pos=xdr.int32, Length=xdr.int32),
            OUT(**_status_cb_sync),
            split=FetchSplit(xdr.int32, "Length"),
        ),
        Rpc("FetchACL", 131, IN(**_fid), OUT(AccessList=AFSOpaque, **_status_sync)),
        Rpc("FetchStatus", 132, IN(**_fid), OUT(**_status_cb_sync)),
        Rpc(
            "StoreData",
            133,
            IN(
                Fid=AFSFid,
                InStatus=AFSStoreStatus,
                Pos=xdr.uint32,
                Length=xdr.uint32,
                FileLength=xdr.uint32,
            ),
            OUT(**_status_sync),
            split=StoreSplit("Length"),
        ),
        Rpc("OldStoreACL", 134, IN(Fid=AFSFid, AccessList=AFSOpaque), OUT(**_status_sync)),
        Rpc("StoreStatus", 135, IN(Fid=AFSFid, InStatus=AFSStoreStatus), OUT(**_status_sync)),
        Rpc("RemoveFile", 136, IN(DirFid=AFSFid, Name=_name), OUT(**_status_sync)),
        Rpc(
            "CreateFile",
            137,
            IN(DirFid=AFSFid, Name=_name, InStatus=AFSStoreStatus),
            OUT(
                OutFid=AFSFid,
                OutFidStatus=AFSFetchStatus,
                OutDirStatus=AFSFetchStatus,
                CallBack=AFSCallBack,
                Sync=AFSVolSync,
            ),
        ),
        Rpc(
            "Rename",
            138,
            IN(OldDirFid=AFSFid, OldName=_name, NewDirFid=AFSFid, NewName=_name),
            OUT(OutOldDirStatus=AFSFetchStatus, OutNewDirStatus=AFSFetchStatus, Sync=AFSVolSync),
        ),
        Rpc(
            "Symlink",
            139,
            IN(DirFid=AFSFid, Name=_name, LinkContents=_path, InStatus=AFSStoreStatus),
            OUT(
                OutFid=AFSFid,
                OutFidStatus=AFSFetchStatus,
                OutDirStatus=AFSFetchStatus,
                Sync=AFSVolSync,
            ),
        ),
        Rpc(
            "Link",
            140,
            IN(DirFid=AFSFid, Name=_name, ExistingFid=AFSFid),
            OUT(OutFidStatus=AFSFetchStatus, OutDirStatus=AFSFetchStatus, Sync=AFSVolSync),
        ),
        Rpc(
            "MakeDir",
            141,
            IN(DirFid=AFSFid, Name=_name, InStatus=AFSStoreStatus),
            OUT(
                OutFid=AFSFid,
                OutFidStatus=AFSFetchStatus,
                OutDirStatus=AFSFetchStatus,
                CallBack=AFSCallBack,
                Sync=AFSVolSync,
            ),
        ),
        Rpc(
            "RemoveDir",
            142,
            IN(DirFid=AFSFid, Name=_name),
            OUT(OutDirStatus=AFSFetchStatus, Sync=AFSVolSync),
        ),
        # The client sends one AFSCallBack (type CB_DROPPED) for all the fids.
        Rpc("GiveUpCallBacks", 147, IN(Fids_Array=AFSCBFids, CallBacks_Array=AFSCBs)),
        Rpc(
            "GetVolumeStatus",
            149,
            IN(Volumeid=xdr.int32),
            OUT(
                Volumestatus=AFSFetchVolumeStatus,
                Name=_name,
                OfflineMsg=_opaque_text,
                Motd=_opaque_text,
            ),
        ),
        Rpc(
            "SetVolumeStatus",
            150,
            IN(
                Volumeid=xdr.int32,
                Volumestatus=AFSStoreVolumeStatus,
                Name=_name,
                OfflineMsg=_opaque_text,
                Motd=_opaque_text,
            ),
        ),
        Rpc("GetRootVolume", 151, OUT(VolumeName=_name)),
        Rpc("GetTime", 153, OUT(Seconds=xdr.uint32, USeconds=xdr.uint32)),
        Rpc("BulkStatus", 155, *_bulk),
        Rpc("SetLock", 156, IN(Fid=AFSFid, Type=xdr.int32), OUT(Sync=AFSVolSync)),
        Rpc("ExtendLock", 157, IN(**_fid), OUT(Sync=AFSVolSync)),
        Rpc("ReleaseLock", 158, IN(**_fid), OUT(Sync=AFSVolSync)),
        Rpc("XStatsVersion", 159, OUT(versionNumberP=xdr.int32)),
        Rpc(
            "GetXStats",
            160,
            IN(clientVersionNumber=xdr.int32, collectionNumber=xdr.int32),
            OUT(srvVersionNumberP=xdr.int32, timeP=xdr.int32, dataP=AFS_CollData),
        ),
        # The replacement for 134 (OpenAFS master).  Fileservers that predate it, 1.8.9
        # among them, answer RXGEN_OPCODE: there 134 is still called StoreACL.  Try 164,
        # then 134.
        Rpc("StoreACL", 164, IN(Fid=AFSFid, AccessList=AFSOpaque), OUT(**_status_sync)),
        # Unlike BulkStatus, a bad fid does not fail the call: its entry carries errorCode.
        Rpc("InlineBulkStatus", 65536, *_bulk),
        Rpc(
            "FetchData64",
            65537,
            IN(Fid=AFSFid, Pos=xdr.int64, Length=xdr.int64),
            OUT(**_status_cb_sync),
            split=FetchSplit(xdr.int64, "Length"),
        ),
        Rpc(
            "StoreData64",
            65538,
            IN(
                Fid=AFSFid,
                InStatus=AFSStoreStatus,
                Pos=xdr.uint64,
                Length=xdr.uint64,
                FileLength=xdr.uint64,
            ),
            OUT(**_status_sync),
            split=StoreSplit("Length"),
        ),
        Rpc("GiveUpAllCallBacks", 65539),
        Rpc("GetCapabilities", 65540, OUT(capabilities=Capabilities)),
        Rpc("CallBackRxConnAddr", 65541, IN(addr=xdr.int32)),
        Rpc("GetStatistics64", 65542, IN(statsVersion=xdr.int32), OUT(Statistics=ViceStatistics64)),
    ],
    errors={**VOLUME_ERROR_NAMES, **UAE_ERROR_NAMES},
)
