"""The neighbour table (IP -> MAC) and the ARP proxy's reply, checked against scapy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

from vxlanpy.neigh import NeighExists, NeighNotFound, NeighTable, arp_reply
from vxlanpy.wire import ARP_REQUEST, ArpPacket, parse_arp

MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")
HOST_MAC = bytes.fromhex("52540012ab34")


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


# --- table ----------------------------------------------------------------------------------


def test_empty() -> None:
    t = NeighTable()
    assert len(t) == 0
    assert t.entries() == []
    assert t.lookup(packed("10.0.0.1")) is None


@pytest.mark.parametrize("ip", ["10.0.0.1", "2001:db8::1"])
def test_add_and_lookup_by_packed_address(ip: str) -> None:
    t = NeighTable()
    t.add(ip, MAC1)
    assert t.lookup(packed(ip)) == MAC1
    assert len(t) == 1
    assert t.entries() == [(ip, MAC1)]


def test_v4_and_v6_lookups_use_4_and_16_byte_keys() -> None:
    t = NeighTable()
    t.add("10.0.0.1", MAC1)
    t.add("2001:db8::1", MAC2)
    assert t.lookup(bytes((10, 0, 0, 1))) == MAC1
    assert t.lookup(bytes.fromhex("20010db8000000000000000000000001")) == MAC2
    # the IPv4-mapped IPv6 address is a different key
    assert t.lookup(packed("::ffff:10.0.0.1")) is None
    assert t.lookup(packed("10.0.0.2")) is None
    assert len(t) == 2


def test_ipv6_spellings_are_one_entry() -> None:
    t = NeighTable()
    t.add("2001:DB8:0:0::1", MAC1)
    with pytest.raises(NeighExists):
        t.add("2001:db8::1", MAC2)
    assert t.entries() == [("2001:db8::1", MAC1)]
    t.delete("2001:0db8::0001")
    assert len(t) == 0


@pytest.mark.parametrize("ip", ["10.0.0.1", "2001:db8::1"])
def test_add_existing_raises(ip: str) -> None:
    t = NeighTable()
    t.add(ip, MAC1)
    with pytest.raises(NeighExists):
        t.add(ip, MAC2)
    with pytest.raises(NeighExists):
        t.add(ip, MAC1)
    assert t.lookup(packed(ip)) == MAC1


def test_replace_overwrites_or_creates() -> None:
    t = NeighTable()
    t.replace("10.0.0.1", MAC1)
    assert t.lookup(packed("10.0.0.1")) == MAC1
    t.replace("10.0.0.1", MAC2)
    assert t.lookup(packed("10.0.0.1")) == MAC2
    assert len(t) == 1


def test_delete() -> None:
    t = NeighTable()
    t.add("10.0.0.1", MAC1)
    t.add("2001:db8::1", MAC1)
    t.delete("10.0.0.1")
    assert t.lookup(packed("10.0.0.1")) is None
    assert t.lookup(packed("2001:db8::1")) == MAC1
    with pytest.raises(NeighNotFound):
        t.delete("10.0.0.1")
    t.add("10.0.0.1", MAC2)  # re-adding after delete works
    assert t.lookup(packed("10.0.0.1")) == MAC2


@pytest.mark.parametrize("ip", ["10.0.0.9", "2001:db8::9"])
def test_delete_missing_raises(ip: str) -> None:
    with pytest.raises(NeighNotFound):
        NeighTable().delete(ip)


@pytest.mark.parametrize(
    "mac",
    [
        bytes.fromhex("ffffffffffff"),  # broadcast
        bytes.fromhex("01005e000001"),  # IPv4 multicast
        bytes.fromhex("333300000001"),  # IPv6 multicast
        bytes.fromhex("030000000001"),  # any address with the I/G bit set
        bytes.fromhex("0200000001"),  # too short
        bytes.fromhex("02000000000102"),  # too long
    ],
)
def test_multicast_and_malformed_macs_are_rejected(mac: bytes) -> None:
    t = NeighTable()
    with pytest.raises(ValueError):
        t.add("10.0.0.1", mac)
    t.add("10.0.0.1", MAC1)
    with pytest.raises(ValueError):
        t.replace("10.0.0.1", mac)
    assert t.lookup(packed("10.0.0.1")) == MAC1
    assert len(t) == 1


@pytest.mark.parametrize("ip", ["", "10.0.0", "10.0.0.256", "host.example", "2001:db8::g"])
def test_bad_addresses_are_rejected(ip: str) -> None:
    t = NeighTable()
    with pytest.raises(ValueError):
        t.add(ip, MAC1)
    with pytest.raises(ValueError):
        t.replace(ip, MAC1)
    assert len(t) == 0


def test_stored_mac_is_an_immutable_copy() -> None:
    t = NeighTable()
    mac = bytearray(MAC1)
    t.add("10.0.0.1", mac)  # type: ignore[arg-type]
    mac[5] = 0x99
    got = t.lookup(packed("10.0.0.1"))
    assert got == MAC1
    assert type(got) is bytes


# --- ARP reply ------------------------------------------------------------------------------


def scapy_request(sha: str, spa: str, tpa: str) -> ArpPacket:
    """An ARP request as a host sends it, built by scapy and parsed by vxlanpy."""
    frame = bytes(
        Ether(src=sha, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=sha, psrc=spa, pdst=tpa)
    )
    req = parse_arp(frame[14:])
    assert req is not None and req.op == ARP_REQUEST
    return req


def check_reply(frame: bytes, owner: str, target_ip: str, sha: str, spa: str) -> None:
    assert len(frame) == 60
    assert frame[42:] == b"\x00" * 18  # padding after the 28-byte ARP body
    eth = Ether(frame)
    assert eth.dst == sha
    assert eth.src == owner
    assert eth.type == 0x0806
    arp = eth[ARP]
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, 0x0800, 6, 4)
    assert arp.op == 2  # is-at
    assert arp.hwsrc == owner
    assert arp.psrc == target_ip
    assert arp.hwdst == sha
    assert arp.pdst == spa


def test_arp_reply() -> None:
    req = scapy_request("52:54:00:12:ab:34", "10.0.0.1", "10.0.0.2")
    t = NeighTable()
    t.add("10.0.0.2", MAC2)
    mac = t.lookup(req.tpa)
    assert mac == MAC2
    frame = arp_reply(req, mac)
    check_reply(frame, "02:00:00:00:00:02", "10.0.0.2", "52:54:00:12:ab:34", "10.0.0.1")
    # and vxlanpy reads its own reply back the same way
    rep = parse_arp(frame[14:])
    assert rep == ArpPacket(2, MAC2, packed("10.0.0.2"), HOST_MAC, packed("10.0.0.1"))


def test_arp_reply_ignores_the_requests_target_hardware_address() -> None:
    frame = bytes(
        Ether(src="52:54:00:12:ab:34", dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc="52:54:00:12:ab:34", psrc="10.0.0.1", hwdst="ff:ff:ff:ff:ff:ff")
    )
    req = parse_arp(frame[14:])
    assert req is not None
    out = arp_reply(req, MAC1)
    check_reply(out, "02:00:00:00:00:01", req.target_ip.compressed, "52:54:00:12:ab:34", "10.0.0.1")


unicast_macs = st.binary(min_size=6, max_size=6).map(lambda b: bytes((b[0] & 0xFE,)) + b[1:])
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


@given(sha=unicast_macs, owner=unicast_macs, spa=ipv4, tpa=ipv4)
def test_arp_reply_matches_scapy(sha: bytes, owner: bytes, spa: str, tpa: str) -> None:
    req = scapy_request(sha.hex(":"), spa, tpa)
    check_reply(arp_reply(req, owner), owner.hex(":"), tpa, sha.hex(":"), spa)
