"""io/hostwatch.py without privileges: how notifications are told apart, what counts as
something tunnel GSO would skip, and how a read that fails is reported. (Against the kernel,
with nftables, xfrm and routes changed while a VTEP runs: tests/netns/test_tunnel_gso.py.)"""

from __future__ import annotations

import errno
import os
import socket
import struct
from pathlib import Path

import pytest

from vxlanpy.io import hostwatch
from vxlanpy.io.hostwatch import RTM_NEWNEIGH, HostWatch

RTM_NEWROUTE, RTM_NEWLINK = 24, 16


def _msg(kind: int, body: bytes = b"\0" * 12) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


class _Calls:
    def __init__(self) -> None:
        self.got: list[str] = []

    def watch(self) -> HostWatch:
        w = HostWatch.__new__(HostWatch)  # no sockets: the handlers alone
        w.on_policy = lambda: self.got.append("policy")
        w.on_route = lambda: self.got.append("route")
        w.on_neigh = lambda addrs: self.got.append(
            "neigh" if addrs is None else "neigh " + ",".join(sorted(addrs))
        )
        w.devindex = None
        return w


def _nd(ip: str | None, family: int = socket.AF_INET, dev: int = 0) -> bytes:
    """An ndmsg for neighbour ``ip`` on device ``dev`` (None: without NDA_DST)."""
    body = struct.pack("=BBHiHBB", family, 0, 0, dev, 2, 0, 1)
    return body + (hostwatch._nla(hostwatch.NDA_DST, socket.inet_aton(ip)) if ip else b"")


def test_route_messages_are_told_from_neighbour_ones() -> None:
    c = _Calls()
    w = c.watch()
    w._route(_msg(RTM_NEWNEIGH, _nd("198.18.0.9")) + _msg(RTM_NEWNEIGH, _nd("198.18.0.1")))
    assert c.got == ["neigh 198.18.0.1,198.18.0.9"]  # once per read, with every address
    w._route(_msg(RTM_NEWNEIGH, _nd("198.18.0.9")) + _msg(RTM_NEWROUTE))
    assert c.got[1:] == ["route"]  # a route among them: the stronger reaction only
    w._route(None)  # notifications were lost (ENOBUFS): anything may have changed
    assert c.got[2:] == ["route"]
    w._route(b"\x05\x00")  # a short, malformed read: nothing to act on, no crash
    w._route(struct.pack("=IHHII", 4, RTM_NEWROUTE, 0, 0, 0))  # a length below the header
    assert len(c.got) == 3
    # IPv6 neighbours and bridge FDB entries (AF_BRIDGE): none of an IPv4 tunnel's hops
    w._route(_msg(RTM_NEWNEIGH, _nd(None, socket.AF_INET6)) + _msg(RTM_NEWNEIGH, _nd(None, 7)))
    assert len(c.got) == 3
    # an IPv4 neighbour without its address: which one is not known
    w._route(_msg(RTM_NEWNEIGH, _nd("198.18.0.9")) + _msg(RTM_NEWNEIGH, _nd(None)))
    assert c.got[3:] == ["neigh"]
    w._route(_msg(RTM_NEWNEIGH, b"\x02\0\0\0\0\0\0\0"))  # shorter than an ndmsg: skipped
    assert len(c.got) == 4


def test_links_and_neighbours_of_other_devices_are_not_acted_on() -> None:
    c = _Calls()
    w = c.watch()
    w.devindex = 7
    on = lambda i: struct.pack("=BBHi", 2, 0, 0, i) + b"\0" * 8  # noqa: E731  (ndmsg/ifinfomsg)
    w._route(_msg(RTM_NEWNEIGH, _nd("198.18.0.9", dev=3)) + _msg(RTM_NEWLINK, on(3)))
    assert c.got == []  # a pod's veth, say
    w._route(_msg(RTM_NEWNEIGH, _nd("198.18.0.9", dev=7)))
    w._route(_msg(RTM_NEWLINK, on(7)))
    w._route(_msg(RTM_NEWROUTE, on(3)))  # a route by any device may be the remote's now
    assert c.got == ["neigh 198.18.0.9", "route", "route"]


class _Sock:
    def __init__(self, reads: list[bytes | int]) -> None:
        self.reads = reads

    def recv(self, _n: int) -> bytes:
        if not self.reads:
            raise BlockingIOError
        r = self.reads.pop(0)
        if isinstance(r, int):
            raise OSError(r, os.strerror(r))
        return r


def test_a_read_drains_the_socket_and_an_overflow_counts_as_a_change() -> None:
    c = _Calls()
    w = c.watch()
    HostWatch._read(_Sock([b"x", b"y"]), lambda d: c.got.append(f"data {d!r}"))  # type: ignore[arg-type]
    assert c.got == ["data b'x'", "data b'y'"]
    c.got.clear()
    HostWatch._read(_Sock([errno.ENOBUFS, b"z"]), w._route)  # type: ignore[arg-type]
    assert c.got[0] == "route"
    with pytest.raises(OSError):  # anything else is not swallowed
        HostWatch._read(_Sock([errno.EBADF]), w._route)  # type: ignore[arg-type]
    # a storm is read over several turns of the loop, not in one unbounded one
    c.got.clear()
    HostWatch._read(_Sock([b"m"] * 300), lambda d: c.got.append("m"))  # type: ignore[arg-type]
    assert len(c.got) == 256


def test_legacy_tables_are_read_through_the_fd_opened_at_start(tmp_path: Path) -> None:
    f = tmp_path / "ip_tables_names"
    f.write_text("filter\nnat\n")
    fd = os.open(f, os.O_RDONLY)
    try:
        assert hostwatch.legacy_tables(fd) == ["filter", "nat"]
        assert hostwatch.legacy(fd) == "iptables-legacy: table filter, table nat"
        f.write_text("")
        assert hostwatch.legacy(fd) is None
    finally:
        os.close(fd)


def test_what_would_be_skipped_and_a_failed_read(monkeypatch: pytest.MonkeyPatch) -> None:
    chains = ["inet filter output (hook output, 1 rule)", "ip nat post (hook postrouting, 2 rules)"]
    monkeypatch.setattr(hostwatch, "nft_chains", lambda: chains)
    monkeypatch.setattr(hostwatch, "xfrm_policies", lambda: 2)
    monkeypatch.setattr(hostwatch, "legacy_tables", lambda fd=None: [])
    assert hostwatch.skipped() == (
        "nftables: chain inet filter output (hook output, 1 rule), "
        "chain ip nat post (hook postrouting, 2 rules)"
    )
    monkeypatch.setattr(hostwatch, "nft_chains", lambda: [])
    assert hostwatch.skipped() == "xfrm: 2 IPsec policies"
    monkeypatch.setattr(hostwatch, "xfrm_policies", lambda: 0)
    assert hostwatch.skipped() is None

    def refused() -> list[str]:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(hostwatch, "nft_chains", refused)  # e.g. after a privilege drop
    assert hostwatch.skipped() == (
        "cannot read the host's nftables and xfrm tables (Operation not permitted)"
    )


def _chain(
    family: int, table: str, name: str, hook: int | bytes | None, policy: int | None
) -> bytes:
    body = struct.pack("=BBH", family, 0, 0)
    body += hostwatch._nla(hostwatch.NFTA_CHAIN_TABLE, table.encode() + b"\0")
    body += hostwatch._nla(hostwatch.NFTA_CHAIN_NAME, name.encode() + b"\0")
    if hook is not None:
        raw = hook if isinstance(hook, bytes) else struct.pack(">I", hook)
        num = hostwatch._nla(hostwatch.NFTA_HOOK_HOOKNUM, raw)
        body += hostwatch._nla(hostwatch.NFTA_CHAIN_HOOK | 0x8000, num)  # NLA_F_NESTED
    if policy is not None:
        body += hostwatch._nla(hostwatch.NFTA_CHAIN_POLICY, struct.pack(">I", policy))
    return body


def test_only_output_and_postrouting_chains_with_rules_or_a_drop_policy_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inet, ip, ip6 = 1, 2, 10
    new_chain = hostwatch.NFNL_SUBSYS_NFTABLES << 8 | hostwatch.NFT_MSG_NEWCHAIN
    new_rule = hostwatch.NFNL_SUBSYS_NFTABLES << 8 | hostwatch.NFT_MSG_NEWRULE
    chains = [
        _chain(inet, "filter", "input", 1, 0),  # input, policy drop: not on the way out
        _chain(inet, "filter", "fwd", 2, 0),
        _chain(inet, "filter", "output", 3, 1),  # output, accept, no rule: sees nothing
        _chain(inet, "filter", "out2", 3, 0),  # output, policy drop
        _chain(ip, "nat", "post", 4, 1),  # postrouting with rules
        _chain(ip, "nat", "jumped", None, None),  # a regular chain: reached by a rule only
        _chain(ip6, "x", "o", 3, 0),  # IPv6 hooks: tunnel GSO is IPv4 only
        b"\x02",  # truncated: skipped, no crash
    ]
    rules = {("filter", "output"): 0, ("nat", "post"): 2}
    asked: list[tuple[str, str]] = []

    def dump(msg: int, payload: bytes) -> list[tuple[int, bytes]]:
        if msg == hostwatch.NFT_MSG_GETCHAIN:
            return [(new_chain, c) for c in chains] + [(0x99, b"")]
        key = tuple(
            hostwatch._name(hostwatch._attr(payload, 4, a))
            for a in (hostwatch.NFTA_RULE_TABLE, hostwatch.NFTA_RULE_CHAIN)
        )
        asked.append(key)  # type: ignore[arg-type]
        return [(new_rule, b"")] * rules[key]  # type: ignore[index]

    monkeypatch.setattr(hostwatch, "_nft_dump", dump)
    assert hostwatch.nft_chains() == [
        "inet filter out2 (hook output, policy drop)",
        "ip nat post (hook postrouting, 2 rules)",
    ]
    assert asked == [("filter", "output"), ("nat", "post")]  # rules asked for those alone
    rules[("filter", "output")] = 1
    assert hostwatch.nft_chains()[0] == "inet filter output (hook output, 1 rule)"
    # a hook number that cannot be read: not known to be off the way out, so it counts
    chains[:] = [_chain(ip, "t", "odd", b"\0\3", None)]  # two bytes, not four
    rules[("t", "odd")] = 0
    assert hostwatch.nft_chains() == ["ip t odd (hook ?, 0 rules)"]

    def missing(msg: int, payload: bytes) -> list[tuple[int, bytes]]:
        raise OSError(errno.EINVAL, "no nf_tables")

    monkeypatch.setattr(hostwatch, "_nft_dump", missing)
    assert hostwatch.nft_chains() == []  # a kernel without nf_tables has no chains


def test_attributes_are_parsed_within_bounds() -> None:
    name = b"filter\0"
    attr = struct.pack("=HH", 4 + len(name), 1) + name
    assert hostwatch._attr(b"\0" * 4 + attr, 4, 1) == name
    assert hostwatch._attr(b"\0" * 4 + attr, 4, 2) is None
    assert hostwatch._attr(b"\0" * 4 + struct.pack("=HH", 2, 1), 4, 1) is None  # bad length
    assert hostwatch._attr(b"\0" * 4 + b"\x01", 4, 1) is None  # truncated


def test_groups_are_bits_of_the_multicast_mask() -> None:
    assert hostwatch._groups(1) == 1 and hostwatch._groups(3, 7) == 0b1000100
