"""What tunnel GSO's redirect would skip, read from the kernel and watched for changes.

Tunnel GSO (io/tgso.py) puts super-frames on the underlay device through a tc redirect, so they
do not pass the IPv4 output path the datagrams take: no netfilter (the output and postrouting
hooks of nftables' ``ip`` and ``inet`` tables, iptables-legacy tables), no xfrm (IPsec) policy,
and a route and
next hop read from the kernel's tables rather than looked up per packet. With
``tunnel_gso = "auto"`` (the default) super-frames go whole only while nothing of that could
see them: :func:`skipped` says what would be skipped (None: nothing), and :class:`HostWatch`
subscribes to the kernel's notifications so that a table, policy, route or neighbour change
is acted on as it happens, not at the next poll.

Reading nftables and xfrm needs CAP_NET_ADMIN (nfnetlink and xfrm netlink refuse dumps
without it); so does subscribing to their notifications, which is why the watch is opened at
start, before a privilege drop. A change seen after a drop that left the capability out
cannot be read back, and counts as something that would be skipped.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from collections.abc import Callable

__all__ = [
    "skipped",
    "netfilter_xfrm",
    "legacy",
    "nft_chains",
    "xfrm_policies",
    "legacy_tables",
    "HostWatch",
]

NETLINK_ROUTE, NETLINK_XFRM, NETLINK_NETFILTER = 0, 6, 12
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN, NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 3, 4, 6, 7
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY = 1, 3, 4, 5
NFTA_HOOK_HOOKNUM = 1
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NF_ACCEPT = 1
# the hooks tunnel GSO's packets skip (NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING)
_SKIPPED_HOOKS = {3: "output", 4: "postrouting"}
_VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop"}
NFPROTO_INET, NFPROTO_IPV4 = 1, 2  # the families whose hooks see IPv4 packets
NFNLGRP_NFTABLES = 7
XFRM_MSG_NEWPOLICY, XFRM_MSG_GETPOLICY = 0x13, 0x15
XFRMNLGRP_POLICY = 4
RTM_NEWLINK, RTM_DELLINK, RTM_NEWNEIGH, RTM_DELNEIGH = 16, 17, 28, 29
RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE = (
    1, 3, 5, 7, 8,
)  # fmt: skip
NDA_DST = 1
_NDMSG = 12  # struct ndmsg: family, pads, ifindex, state, flags, type; then the attributes
LEGACY = "/proc/net/ip_tables_names"  # iptables-legacy's IPv4 tables in this namespace
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_Handler = Callable[[bytes | None], None]  # a socket's messages (None: some were lost)
_FAMILY = {NFPROTO_INET: "inet", NFPROTO_IPV4: "ip"}


def _groups(*numbers: int) -> int:
    return sum(1 << (n - 1) for n in numbers)


def _dump(proto: int, msgtype: int, payload: bytes) -> list[tuple[int, bytes]]:
    """One netlink dump: (type, payload) of each reply. OSError with the kernel's errno."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto) as s:
        s.settimeout(1)  # the kernel answers at once; a dump runs in the loop's thread
        s.bind((0, 0))
        head = _HDR.pack(_HDR.size + len(payload), msgtype, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        s.send(head + payload)
        out: list[tuple[int, bytes]] = []
        while True:
            messages, whole = _messages(s.recv(1 << 16))
            for kind, body in messages:
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", body)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return out
                out.append((kind, body))
            if not whole:
                return out


def _messages(data: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """The netlink messages in one read, as (type, payload), and False if a header gave a
    length below its own size (what follows it cannot be parsed)."""
    out: list[tuple[int, bytes]] = []
    off = 0
    while off + _HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            return out, False
        out.append((kind, data[off + _HDR.size : off + length]))
        off += (length + 3) & ~3
    return out, True


def _attr(body: bytes, start: int, want: int) -> bytes | None:
    off = start
    while off + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, off)
        if length < 4:
            return None
        if kind & 0x3FFF == want:
            return body[off + 4 : off + length]
        off += (length + 3) & ~3
    return None


def _nfgen(family: int) -> bytes:
    return struct.pack("=BBH", family, 0, 0)


def _nla(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _name(raw: bytes | None) -> str:
    return (raw or b"?").rstrip(b"\0").decode(errors="replace")


def _nft_dump(msg: int, payload: bytes) -> list[tuple[int, bytes]]:
    return _dump(NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES << 8 | msg, payload)


def nft_chains() -> list[str]:
    """The nftables base chains that would see IPv4 output: those of ``ip`` and ``inet``
    tables on the output and postrouting hooks that hold a rule or whose policy is not
    accept, as "FAMILY TABLE CHAIN (hook HOOK, N rules | policy P)". A table with no such
    chain (Debian's default ruleset: empty chains that accept; a firewall of input rules
    alone) sees nothing of what tunnel GSO sends. OSError (EPERM) without CAP_NET_ADMIN; a
    kernel without nf_tables has none."""
    try:
        replies = _nft_dump(NFT_MSG_GETCHAIN, _nfgen(socket.AF_UNSPEC))
    except OSError as exc:
        # a kernel without nf_tables: nfnetlink has no such subsystem (EINVAL once the module
        # could not be loaded); none of its chains can exist
        if exc.errno in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT, errno.EINVAL):
            return []
        raise
    found = []
    for kind, body in replies:
        if kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN or len(body) < 4:
            continue
        family = _FAMILY.get(body[0])
        hook = _attr(body, 4, NFTA_CHAIN_HOOK)  # base chains only; a regular chain is reached
        if family is None or hook is None:  # by a jump, which is a rule of a base chain
            continue
        raw = _attr(hook, 0, NFTA_HOOK_HOOKNUM)
        num = struct.unpack(">I", raw)[0] if raw is not None and len(raw) == 4 else None
        where = _SKIPPED_HOOKS.get(num) if num is not None else None
        if num is not None and where is None:  # prerouting, input, forward: not on the way out
            continue
        table, chain = _attr(body, 4, NFTA_CHAIN_TABLE), _attr(body, 4, NFTA_CHAIN_NAME)
        label = f"{family} {_name(table)} {_name(chain)} (hook {where or '?'}"
        policy = _attr(body, 4, NFTA_CHAIN_POLICY)
        verdict = struct.unpack(">I", policy)[0] if policy and len(policy) == 4 else NF_ACCEPT
        if verdict != NF_ACCEPT:
            found.append(f"{label}, policy {_VERDICTS.get(verdict, verdict)})")
            continue
        rules = _nft_dump(
            NFT_MSG_GETRULE,
            _nfgen(body[0]) + _nla(NFTA_RULE_TABLE, table or b"")
            + _nla(NFTA_RULE_CHAIN, chain or b""),
        )  # fmt: skip
        n = sum(1 for k, _ in rules if k == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE)
        if n or num is None:  # no hook number: not understood, so it counts
            found.append(f"{label}, {n} rule{'' if n == 1 else 's'})")
    return found


def xfrm_policies() -> int:
    """How many xfrm (IPsec) policies this namespace holds. OSError (EPERM) without
    CAP_NET_ADMIN; a kernel without xfrm netlink has none."""
    try:
        replies = _dump(NETLINK_XFRM, XFRM_MSG_GETPOLICY, b"")
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT):
            return 0
        raise
    return sum(1 for kind, _ in replies if kind == XFRM_MSG_NEWPOLICY)


def legacy_tables(fd: int | None = None) -> list[str]:
    """iptables-legacy's IPv4 tables here (``/proc/net/ip_tables_names``, or ``fd`` opened on
    it: the file is root's alone). OSError if it exists and cannot be read."""
    if fd is not None:
        data = os.pread(fd, 4096, 0)
    else:
        try:
            with open(LEGACY, "rb") as f:
                data = f.read()
        except FileNotFoundError:  # ip_tables is not loaded: no table
            return []
    return data.decode(errors="replace").split()


def netfilter_xfrm() -> str | None:
    """The nftables tables and xfrm policies that would see IPv4 output, or None."""
    try:
        chains = nft_chains()
        policies = xfrm_policies()
    except OSError as exc:
        return f"cannot read the host's nftables and xfrm tables ({exc.strerror or exc})"
    if chains:
        return "nftables: chain " + ", chain ".join(chains)
    if policies:
        return f"xfrm: {policies} IPsec polic{'y' if policies == 1 else 'ies'}"
    return None


def legacy(fd: int | None = None) -> str | None:
    """iptables-legacy's IPv4 tables, or None (``fd``: see :func:`legacy_tables`)."""
    try:
        tables = legacy_tables(fd)
    except OSError as exc:
        return f"cannot read {LEGACY} ({exc.strerror or exc})"
    return "iptables-legacy: table " + ", table ".join(tables) if tables else None


def skipped(legacy_fd: int | None = None) -> str | None:
    """What on this host's IPv4 output path tunnel GSO's packets would not pass, or None."""
    return netfilter_xfrm() or legacy(legacy_fd)


class HostWatch:
    """The kernel's notifications that change what tunnel GSO may do: nftables and xfrm
    policy changes (``on_policy``), route, rule and address changes and the underlay device's
    link changes (``on_route``), its IPv4 neighbours' changes (``on_neigh``, told the
    addresses, or None where a message did not say which). Each socket is read
    in the loop's thread (:meth:`sockets` are handed to ``add_reader``); a callback runs once
    per read, however many messages it drained. Overflows (ENOBUFS: notifications lost)
    count as a change."""

    def __init__(
        self,
        on_policy: Callable[[], None],
        on_route: Callable[[], None],
        on_neigh: Callable[[frozenset[str] | None], None],
        devindex: int | None = None,
    ) -> None:
        self.on_policy, self.on_route, self.on_neigh = on_policy, on_route, on_neigh
        self.devindex = devindex  # the underlay device's index (None: every device's)
        self._socks: list[tuple[socket.socket, _Handler]] = []
        self.legacy_fd: int | None = None
        try:
            self.legacy_fd = os.open(LEGACY, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        try:
            self._open(NETLINK_ROUTE, _groups(
                RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE,
                RTNLGRP_IPV4_RULE,
            ), self._route)  # fmt: skip
            self._open(NETLINK_NETFILTER, _groups(NFNLGRP_NFTABLES), self._policy, optional=True)
            self._open(NETLINK_XFRM, _groups(XFRMNLGRP_POLICY), self._policy, optional=True)
        except OSError:
            self.close()
            raise

    def _open(self, proto: int, groups: int, handler: _Handler, optional: bool = False) -> None:
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, proto)
        except OSError as exc:  # no such netlink family in this kernel: nothing to watch
            if optional and exc.errno == errno.EPROTONOSUPPORT:
                return
            raise
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((0, groups))
        except OSError:
            s.close()
            raise
        self._socks.append((s, handler))

    def sockets(self) -> list[tuple[int, Callable[[], None]]]:
        """(fd, callback) for each socket, to hand to ``loop.add_reader``."""
        return [(s.fileno(), functools.partial(self._read, s, h)) for s, h in self._socks]

    @staticmethod
    def _read(s: socket.socket, handler: _Handler) -> None:
        chunks: list[bytes] = []
        lost = False
        for _ in range(256):  # bounded: a storm of notifications is read over several turns
            try:
                chunks.append(s.recv(1 << 16))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = True
        if lost:
            handler(None)
        for data in chunks:
            handler(data)

    def _policy(self, _data: bytes | None) -> None:
        self.on_policy()

    def _route(self, data: bytes | None) -> None:
        if data is None:
            self.on_route()
            return
        route = False
        neigh: set[str] | None = set()
        for kind, body in _messages(data)[0]:
            # links and neighbours: the underlay device's only (a pod's veth, an overlay
            # neighbour are none of tunnel GSO's business); ifinfomsg and ndmsg both hold the
            # device's index at offset 4. Routes, rules, addresses: any
            dev = body[4:8]
            ours = self.devindex is None or (
                len(dev) == 4 and struct.unpack("=i", dev)[0] == self.devindex
            )
            if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
                if ours and len(body) >= _NDMSG and body[0] == socket.AF_INET:
                    dst = _attr(body, _NDMSG, NDA_DST)
                    if neigh is not None and dst is not None and len(dst) == 4:
                        neigh.add(socket.inet_ntoa(dst))
                    else:
                        neigh = None  # an IPv4 neighbour, but which: every remote may be
            elif kind in (RTM_NEWLINK, RTM_DELLINK):
                route = route or ours
            else:
                route = True
        if route:
            self.on_route()
        elif neigh is None or neigh:
            self.on_neigh(None if neigh is None else frozenset(neigh))

    def close(self) -> None:
        for s, _h in self._socks:
            s.close()
        self._socks = []
        if self.legacy_fd is not None:
            os.close(self.legacy_fd)
            self.legacy_fd = None
