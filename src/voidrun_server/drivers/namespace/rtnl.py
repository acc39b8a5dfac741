"""Just enough rtnetlink, on a plain socket: batched requests, every acknowledgement checked.

Wiring a sandbox takes a handful of link, address and route messages. Sent through pyroute2
each costs 0.5-1.5 ms of Python (and an IPRoute opened inside a namespace starts its own
event loop); the kernel's work is microseconds. Here the messages are encoded with
``struct``, sent in one ``sendmsg`` per socket (the kernel handles them in order and
acknowledges each one) and the answers read until every sequence number is accounted for.
A refusal raises :class:`NetlinkFailure` naming the message, the errno and the kernel's own
explanation (extended ACK) when it gives one; the caller undoes what the batch did.

Only creation and deletion are here; reading links and routes stays with pyroute2 (start-up).
"""

from __future__ import annotations

import errno as errno_codes
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

__all__ = ["Batch", "NetlinkFailure", "Rtnl"]

NETLINK_ROUTE = 0
TIMEOUT = 10.0  # seconds for a batch's acknowledgements (they take microseconds)
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200  # on an error message: extended-ACK attributes follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24

IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
NLA_F_NESTED = 0x8000

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


class NetlinkFailure(OSError):
    """The kernel refused one message of a batch."""

    def __init__(self, code: int, what: str, reason: str) -> None:
        text = f"{what}: {os.strerror(code)}" + (f" ({reason})" if reason else "")
        super().__init__(code, text)
        self.what = what


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


@dataclass
class Batch:
    """Messages to send together; ``what`` names each one for error messages."""

    messages: list[tuple[int, int, bytes, str]] = field(default_factory=list)

    def _add(self, kind: int, flags: int, body: bytes, what: str) -> Batch:
        self.messages.append((kind, flags, body, what))
        return self

    def veth(self, name: str, peer: str, peer_netns_fd: int, *, up: bool) -> Batch:
        """A veth pair: ``name`` here, ``peer`` created directly in the namespace of the fd."""
        peer_info = (
            _ifinfo()
            + _attr(IFLA_IFNAME, _name(peer))
            + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        )
        info = _nested(
            IFLA_LINKINFO,
            _attr(IFLA_INFO_KIND, b"veth"),
            _nested(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info)),
        )
        body = _ifinfo(up=up) + _attr(IFLA_IFNAME, _name(name)) + info
        return self._add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name}")

    def link_up(self, index: int) -> Batch:
        return self._add(RTM_NEWLINK, 0, _ifinfo(index, up=True), f"set link #{index} up")

    def delete_link(self, name: str) -> Batch:
        body = _ifinfo() + _attr(IFLA_IFNAME, _name(name))
        return self._add(RTM_DELLINK, 0, body, f"delete link {name}")

    def address(self, index: int, address: ipaddress.IPv4Address, prefixlen: int) -> Batch:
        packed = address.packed
        body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        what = f"add address {address}/{prefixlen} on link #{index}"
        return self._add(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, what)

    def route(
        self,
        dst: ipaddress.IPv4Network,
        oif: int,
        *,
        gateway: ipaddress.IPv4Address | None = None,
        protocol: int = RTPROT_BOOT,
    ) -> Batch:
        scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
        body = _RTMSG.pack(
            socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, scope, RTN_UNICAST, 0
        )
        if dst.prefixlen:
            body += _attr(RTA_DST, dst.network_address.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        body += _attr(RTA_OIF, struct.pack("=i", oif))
        what = f"add route {dst}" + (f" via {gateway}" if gateway else "") + f" on link #{oif}"
        return self._add(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, what)


class Rtnl:
    """One rtnetlink socket, in the network namespace of the thread that made it (a socket
    keeps its namespace for life: make it inside, use it from anywhere)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # no request echoed back
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # the kernel's reason
            self._sock.bind((0, 0))
            self._sock.settimeout(TIMEOUT)  # every request is acknowledged: never hang
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, batch: Batch) -> list[NetlinkFailure]:
        """Send the batch, read every acknowledgement; the refusals, in order (the kernel
        carries on with the next message after a refusal)."""
        if not batch.messages:
            return []
        parts, pending = [], {}
        for kind, flags, body, what in batch.messages:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            header = _NLMSGHDR.pack(
                _NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0
            )
            parts.append(header + body)
            pending[self._seq] = what
        self._sock.sendall(b"".join(parts))
        failures = []
        while pending:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if kind == NLMSG_ERROR and seq in pending:
                    what = pending.pop(seq)
                    (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    if code:
                        reason = _ext_reason(data[offset : offset + length], flags)
                        failures.append(NetlinkFailure(-code, what, reason))
                offset += (length + 3) & ~3
        return failures

    def check(self, batch: Batch) -> None:
        """Run the batch; raise the first refusal."""
        failures = self.run(batch)
        if failures:
            raise failures[0]


def _ext_reason(message: bytes, flags: int) -> str:
    """The kernel's text from an error message's extended-ACK attributes (or '')."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # nlmsghdr, the error code, the request's header (NETLINK_CAP_ACK: header only), TLVs.
    offset = _NLMSGHDR.size * 2 + 4
    while offset + _RTATTR.size <= len(message):
        length, kind = _RTATTR.unpack_from(message, offset)
        if length < _RTATTR.size:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return (
                message[offset + _RTATTR.size : offset + length]
                .rstrip(b"\0")
                .decode(errors="replace")
            )
        offset += (length + 3) & ~3
    return ""


def is_missing(failure: OSError) -> bool:
    return failure.errno in (errno_codes.ENODEV, errno_codes.ENOENT)
