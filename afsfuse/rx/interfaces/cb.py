"""Cache-manager callback service (RXAFSCB): service 1 on the CM's own port (`afscbint.xg`).

The CM is the server here; fileservers call it to break callbacks and to learn who it is.
"""

from __future__ import annotations

from .. import xdr
from ..rpc import IN, OUT, Interface, Rpc
from .fs import AFSNAMEMAX, AFSCBFids, AFSCBs, AFSFid, Capabilities

AFS_MAX_INTERFACE_ADDR = 32
AFSMAXCELLHOSTS = 8
AFSCB_XSTAT_VERSION = 2
AFSCB_MAX_XSTAT_LONGS = 2048

# TellMeAboutYourself capabilities word 0: the server may send "uae" error codes instead
# of its own platform's errnos.
CLIENT_CAPABILITY_ERRORTRANS = 0x1
# GetCacheConfig's one layout, cm_initparams_v1 (afs_args.h): nine words.
AFS_CLIENT_RETRIEVAL_FIRST_EDITION = 1
CM_INITPARAMS_V1_WORDS = 9

AFSDBLockDesc = xdr.struct(
    "AFSDBLockDesc",
    waitStates=xdr.char,
    exclLocked=xdr.char,
    readersReading=xdr.short,
    numWaiting=xdr.short,
    spare=xdr.short,
    pid_last_reader=xdr.int32,
    pid_writer=xdr.int32,
    src_indicator=xdr.int32,
)

AFSDBLock = xdr.struct("AFSDBLock", name=xdr.chars(16), lock=AFSDBLockDesc)


def _cache_entry(name: str, length: xdr.Codec) -> type:
    return xdr.struct(
        name,
        addr=xdr.int32,
        cell=xdr.int32,
        netFid=AFSFid,
        Length=length,
        DataVersion=xdr.int32,
        lock=AFSDBLockDesc,
        callback=xdr.int32,
        cbExpires=xdr.int32,
        refCount=xdr.short,
        opens=xdr.short,
        writers=xdr.short,
        mvstat=xdr.char,
        states=xdr.char,
    )


AFSDBCacheEntry = _cache_entry("AFSDBCacheEntry", xdr.int32)
AFSDBCacheEntry64 = _cache_entry("AFSDBCacheEntry64", xdr.int64)

# The CM's identity: its UUID and its interfaces.  Addresses and masks are IPv4 values
# (natural octet order on the wire), declared unsigned for readability.
interfaceAddr = xdr.struct(
    "interfaceAddr",
    numberOfInterfaces=xdr.int32,
    uuid=xdr.afsUUID,
    addr_in=xdr.array(xdr.uint32, AFS_MAX_INTERFACE_ADDR),
    subnetmask=xdr.array(xdr.uint32, AFS_MAX_INTERFACE_ADDR),
    mtu=xdr.array(xdr.int32, AFS_MAX_INTERFACE_ADDR),
)

serverList = xdr.varray(xdr.uint32, AFSMAXCELLHOSTS)
cacheConfig = xdr.varray(xdr.uint32)
AFSCB_CollData = xdr.varray(xdr.int32, AFSCB_MAX_XSTAT_LONGS)

_cell = xdr.string(AFSNAMEMAX)

CB = Interface(
    "CB",
    service_id=1,
    port=7001,
    rpcs=[
        # A fid with Vnode 0 stands for every callback on its volume.
        Rpc("CallBack", 204, IN(Fids_Array=AFSCBFids, CallBacks_Array=AFSCBs)),
        Rpc("InitCallBackState", 205),
        Rpc("Probe", 206),
        Rpc("GetLock", 207, IN(index=xdr.int32), OUT(lock=AFSDBLock)),
        Rpc("GetCE", 208, IN(index=xdr.int32), OUT(ce=AFSDBCacheEntry)),
        Rpc("XStatsVersion", 209, OUT(versionNumberP=xdr.int32)),
        Rpc(
            "GetXStats",
            210,
            IN(clientVersionNumber=xdr.int32, collectionNumber=xdr.int32),
            OUT(srvVersionNumberP=xdr.int32, timeP=xdr.int32, dataP=AFSCB_CollData),
        ),
        Rpc("InitCallBackState2", 211, OUT(addr=interfaceAddr)),
        Rpc("WhoAreYou", 212, OUT(addr=interfaceAddr)),
        Rpc("InitCallBackState3", 213, IN(serverUuid=xdr.afsUUID)),
        # Answer 0 for our own UUID, abort with a non-zero code for any other.
        Rpc("ProbeUuid", 214, IN(clientUuid=xdr.afsUUID)),
        Rpc(
            "GetServerPrefs",
            215,
            IN(serverIndex=xdr.int32),
            OUT(srvrAddr=xdr.uint32, srvrRank=xdr.int32),
        ),
        Rpc(
            "GetCellServDB",
            216,
            IN(cellIndex=xdr.int32),
            OUT(cellName=_cell, cellHosts=serverList),
        ),
        Rpc("GetLocalCell", 217, OUT(cellName=_cell)),
        Rpc(
            "GetCacheConfig",
            218,
            IN(callerVersion=xdr.uint32),
            OUT(serverVersion=xdr.uint32, configCount=xdr.uint32, config=cacheConfig),
        ),
        Rpc("GetCE64", 65536, IN(index=xdr.int32), OUT(ce=AFSDBCacheEntry64)),
        Rpc(
            "GetCellByNum",
            65537,
            IN(cellNumber=xdr.int32),
            OUT(cellName=_cell, cellHosts=serverList),
        ),
        Rpc("TellMeAboutYourself", 65538, OUT(addr=interfaceAddr, capabilities=Capabilities)),
    ],
)
