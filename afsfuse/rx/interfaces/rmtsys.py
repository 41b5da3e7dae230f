"""rmtsys (remote pioctl and setpag): service 4 on UDP 7009 (`rmtsys.xg`).

afsfuse serves it so that OpenAFS's own tools (fs, tokens, aklog, unlog) can drive it.
"""

from __future__ import annotations

from .. import xdr
from ..rpc import IN, INOUT, OUT, Interface, Rpc

RMTSYS_MAXPATHLEN = 4096
MAXBUFFERLEN = 16384
# The path a client sends when the pioctl has none.
NIL_PATHP = "__FOO__"

# The caller's uid and first two groups (a legacy two-group PAG, if it has one).
clientcred = xdr.struct("clientcred", uid=xdr.int32, group0=xdr.int32, group1=xdr.int32)
rmtbulk = xdr.opaque(MAXBUFFERLEN)

RMTSYS = Interface(
    "RMTSYS",
    service_id=4,
    port=7009,
    rpcs=[
        Rpc("SetPag", 1, IN(cred=clientcred), OUT(newpag=xdr.int32, errornumber=xdr.int32)),
        # The RPC itself always succeeds; a failed pioctl is an errno in errornumber.
        # OutData is INOUT: stock clients send a zero-filled buffer as large as they accept,
        # and a server should return only the bytes the pioctl produced.
        Rpc(
            "Pioctl",
            2,
            IN(
                cred=clientcred,
                path=xdr.string(RMTSYS_MAXPATHLEN),
                cmd=xdr.int32,
                follow=xdr.int32,
                InData=rmtbulk,
            ),
            INOUT(OutData=rmtbulk),
            OUT(errornumber=xdr.int32),
        ),
    ],
)
