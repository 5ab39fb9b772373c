"""Leases -> peers -> operations (vxlanpy.flannel.registry), without etcd or netlink."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from vxlanpy.flannel.lease import Lease
from vxlanpy.flannel.registry import LeaseTable, Op, Peer, apply_result, plan

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
P = "/coreos.com/network/subnets/"
OWN = N("198.19.1.0/24")
OWN_IP = A("198.18.0.1")


def _value(i: int, ip: str | None = None, mac: str | None = None) -> str:
    return Lease(
        N(f"198.19.{i}.0/24"), A(ip or f"198.18.0.{i}"), mac or f"02:00:00:00:00:{i:02x}"
    ).encode()


def _peer(i: int, ip: str | None = None, mac: str | None = None) -> Peer:
    return Peer(N(f"198.19.{i}.0/24"), mac or f"02:00:00:00:00:{i:02x}", A(ip or f"198.18.0.{i}"))


def test_snapshot_then_events() -> None:
    t = LeaseTable()
    t.reset([(f"{P}198.19.{i}.0-24", _value(i)) for i in (1, 2, 3)])
    assert t.desired(OWN, OWN_IP) == {p.subnet: p for p in (_peer(2), _peer(3))}
    assert t.put(f"{P}198.19.4.0-24", _value(4)) is not None
    assert t.delete(f"{P}198.19.2.0-24") == N("198.19.2.0/24")
    assert t.delete(f"{P}198.19.2.0-24") is None
    assert set(t.desired(OWN, OWN_IP)) == {N("198.19.3.0/24"), N("198.19.4.0/24")}
    assert t.new_problems() == []


def test_a_bad_value_withdraws_the_lease_at_that_key_and_is_reported_once() -> None:
    t = LeaseTable()
    t.reset([(f"{P}198.19.2.0-24", _value(2)), (f"{P}198.19.3.0-24", _value(3))])
    assert t.put(f"{P}198.19.2.0-24", "{broken") is None
    assert set(t.desired(OWN, OWN_IP)) == {N("198.19.3.0/24")}
    problems = t.new_problems()
    assert len(problems) == 1 and problems[0].startswith(f"{P}198.19.2.0-24: value is not JSON")
    assert t.new_problems() == []  # reported once
    t.put(f"{P}198.19.2.0-24", _value(2))
    assert set(t.desired(OWN, OWN_IP)) == {N("198.19.2.0/24"), N("198.19.3.0/24")}
    t.put(f"{P}198.19.9.0-24", '{"PublicIP": "198.18.0.9", "BackendType": "host-gw"}')
    assert "foreign backend type 'host-gw'" in t.new_problems()[0]


def test_our_ip_and_duplicate_macs_are_skipped() -> None:
    t = LeaseTable()
    t.reset(
        [
            (f"{P}198.19.2.0-24", _value(2, mac="02:aa:00:00:00:01")),
            (f"{P}198.19.3.0-24", _value(3, mac="02:aa:00:00:00:01")),
            (f"{P}198.19.4.0-24", _value(4, ip="198.18.0.1")),
        ]
    )
    assert set(t.desired(OWN, OWN_IP)) == {N("198.19.2.0/24")}
    problems = t.new_problems()
    assert any("198.19.3.0-24: VtepMAC 02:aa:00:00:00:01 is already used" in p for p in problems)
    assert any("198.19.4.0-24: carries this node's PublicIP 198.18.0.1" in p for p in problems)
    t.delete(f"{P}198.19.2.0-24")  # the conflict goes away: 198.19.3.0 is programmed
    assert set(t.desired(OWN, OWN_IP)) == {N("198.19.3.0/24")}


def test_plan_orders_removals_first_and_splits_mac_changes() -> None:
    current = {p.subnet: p for p in (_peer(2), _peer(3), _peer(4))}
    desired = {
        p.subnet: p
        for p in (_peer(3, ip="198.18.9.3"), _peer(4, mac="02:bb:00:00:00:04"), _peer(5))
    }
    ops = plan(current, desired)
    assert [(op.kind, str(op.peer.subnet)) for op in ops] == [
        ("remove", "198.19.2.0/24"),
        ("remove", "198.19.4.0/24"),
        ("update", "198.19.3.0/24"),
        ("add", "198.19.4.0/24"),
        ("add", "198.19.5.0/24"),
    ]
    assert ops[2].old == _peer(3)
    assert plan(desired, desired) == []


def test_apply_result_keeps_failed_additions_out() -> None:
    current = {_peer(2).subnet: _peer(2)}
    ops = [Op("remove", _peer(2)), Op("add", _peer(3)), Op("add", _peer(4))]
    apply_result(current, ops, [ops[2]])
    assert current == {_peer(3).subnet: _peer(3)}
    assert plan(current, {p.subnet: p for p in (_peer(3), _peer(4))}) == [Op("add", _peer(4))]


peers = st.dictionaries(
    st.integers(2, 30),
    st.tuples(st.integers(1, 40), st.integers(1, 9)),  # (MAC suffix, public IP suffix)
    max_size=12,
)


def _peers(d: dict[int, tuple[int, int]]) -> dict[N, Peer]:
    out = {}
    for i, (m, ip) in d.items():
        p = Peer(N(f"198.19.{i}.0/24"), f"02:cc:00:00:{i:02x}:{m:02x}", A(f"198.18.0.{ip}"))
        out[p.subnet] = p
    return out


@given(peers, peers)
def test_plan_then_apply_gives_desired(
    a: dict[int, tuple[int, int]], b: dict[int, tuple[int, int]]
) -> None:
    current, desired = _peers(a), _peers(b)
    ops = plan(current, desired)
    # a model FDB keyed by MAC, operated in plan order, ends equal to the desired one
    fdb = {p.mac: p.public_ip for p in current.values()}
    for op in ops:
        if op.kind == "remove":
            del fdb[op.peer.mac]
        else:
            fdb[op.peer.mac] = op.peer.public_ip
    assert fdb == {p.mac: p.public_ip for p in desired.values()}
    apply_result(current, ops, [])
    assert current == desired
