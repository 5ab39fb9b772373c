"""flannel's etcd formats (vxlanpy.flannel.lease) and subnet choice (subnets), without etcd."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from vxlanpy.flannel.lease import (
    FlannelConfigError,
    Lease,
    LeaseError,
    decode_lease,
    parse_network_config,
    parse_subnet_key,
    subnet_key,
)
from vxlanpy.flannel.subnets import (
    OutOfSubnets,
    choose_subnet,
    read_previous_subnet,
    subnet_env,
    write_subnet_env,
)

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
KEY = "/coreos.com/network/subnets/198.19.5.0-24"
# what flanneld v0.2x writes (json.Marshal of LeaseAttrs with vxlanLeaseAttrs), byte for byte
FLANNELD = (
    '{"PublicIP":"198.18.0.5","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"5e:2c:41:aa:10:07"}}'
)


def test_encode_is_flanneld_byte_for_byte() -> None:
    lease = Lease(N("198.19.5.0/24"), A("198.18.0.5"), "5e:2c:41:aa:10:07")
    assert lease.encode() == FLANNELD
    assert decode_lease(KEY, FLANNELD) == lease
    assert decode_lease(KEY, FLANNELD.encode()) == lease
    assert lease.gateway == A("198.19.5.0")


def test_decode_matches_field_names_as_go_does() -> None:
    # Go's encoding/json is case-insensitive; unknown fields and BackendV6Data are ignored
    value = json.dumps(
        {
            "publicip": "198.18.0.6",
            "backendtype": "vxlan",
            "BACKENDDATA": {"vni": 7, "vtepmac": "5E:2C:41:AA:10:08"},
            "BackendV6Data": {"VNI": 1},
            "Other": 1,
        }
    )
    lease = decode_lease("/p/subnets/198.19.6.0-24&fd00::-64", value)
    assert lease == Lease(N("198.19.6.0/24"), A("198.18.0.6"), "5e:2c:41:aa:10:08", 7)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (KEY, "{not json", "value is not JSON: '{not json'"),
        (KEY, "[]", "value must be a JSON object, got list"),
        (KEY, '{"PublicIP": "198.18.0.5", "BackendType": "udp"}', "foreign backend type 'udp'"),
        (KEY, '{"PublicIP": "198.18.0.5"}', "foreign backend type ''"),
        (KEY, '{"PublicIP": "x", "BackendType": "vxlan"}', "PublicIP 'x' is not an IPv4"),
        (KEY, '{"BackendType": "vxlan"}', "PublicIP must be an IPv4 address string, got None"),
        (
            KEY,
            '{"PublicIP": "0.0.0.0", "BackendType": "vxlan", "BackendData": {}}',
            "PublicIP 0.0.0.0 is not a unicast address",
        ),
        (
            KEY,
            '{"PublicIP": "198.18.0.5", "BackendType": "vxlan", "BackendData": null}',
            "BackendData must be a JSON object",
        ),
        (
            KEY,
            '{"PublicIP": "198.18.0.5", "BackendType": "vxlan", "BackendData": {"VtepMAC": 5}}',
            "BackendData.VtepMAC must be a MAC string, got 5",
        ),
        (
            KEY,
            '{"PublicIP": "198.18.0.5", "BackendType": "vxlan", '
            '"BackendData": {"VtepMAC": "01:00:5e:00:00:01"}}',
            "is not unicast",
        ),
        (
            KEY,
            '{"PublicIP": "198.18.0.5", "BackendType": "vxlan", '
            '"BackendData": {"VtepMAC": "02:00:00:00:00:01", "VNI": -1}}',
            "BackendData.VNI must be an integer",
        ),
        ("/p/subnets/not-a-subnet", FLANNELD, "not a subnet key"),
        ("/p/subnets/198.19.5.1-24", FLANNELD, "not a subnet key"),  # host bits set
        (KEY, b"\xff\xfe", "value is not JSON"),
    ],
)
def test_decode_errors_name_the_key_and_the_problem(key: str, value: str, message: str) -> None:
    with pytest.raises(LeaseError) as info:
        decode_lease(key, value)
    assert str(info.value).startswith(f"{key}: ")
    assert message in str(info.value)


def test_subnet_keys() -> None:
    assert subnet_key(N("198.19.5.0/24")) == "198.19.5.0-24"
    assert parse_subnet_key("/coreos.com/network/subnets/198.19.5.0-24") == N("198.19.5.0/24")
    assert parse_subnet_key("198.19.5.16-28") == N("198.19.5.16/28")
    assert parse_subnet_key("/x/198.19.5.0-24/more") is None
    assert parse_subnet_key("/x/999.19.5.0-24") is None


def test_network_config_defaults_as_flannel() -> None:
    c = parse_network_config('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}')
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (24, A("198.19.1.0"), A("198.19.255.0"))
    assert (c.vni, c.port, c.gbp, c.mtu, c.device) == (1, 8472, False, 0, "flannel.1")
    c = parse_network_config('{"Network": "198.19.0.0/24", "Backend": {"Type": "vxlan"}}')
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (26, A("198.19.0.64"), A("198.19.0.192"))
    c = parse_network_config(
        '{"network": "198.19.0.0/16", "SubnetLen": 28, "SubnetMin": "198.19.3.0", '
        '"SubnetMax": "198.19.4.0", "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, '
        '"MTU": 9000}}'
    )
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (28, A("198.19.3.0"), A("198.19.4.0"))
    assert (c.vni, c.port, c.mtu, c.device) == (42, 4789, 9000, "flannel.42")
    assert c.contains(N("198.19.3.16/28")) and not c.contains(N("198.19.3.0/24"))
    assert not c.contains(N("198.19.4.16/28"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not JSON"),
        ("[1]", "the config must be a JSON object"),
        ("{}", "Network is missing"),
        ('{"Network": 5}', "Network 5 is not an IPv4 CIDR"),
        ('{"Network": "fd00::/64"}', "is not an IPv4 CIDR"),
        ('{"Network": "198.19.0.0/16", "SubnetLen": 31}', "SubnetLen must be less than /31"),
        ('{"Network": "198.19.0.0/29"}', "Network is too small"),
        ('{"Network": "198.19.0.0/16", "SubnetMin": "10.0.0.0"}', "SubnetMin is not in the"),
        ('{"Network": "198.19.0.0/16", "SubnetMax": "198.19.0.1"}', "SubnetMax is not on a"),
        ('{"Network": "198.19.0.0/16"}', "Backend.Type is 'udp'"),  # flannel's default
        ('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}}', "Port"),
        ('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "GBP": 1}}', "GBP must be"),
        ('{"Network": "198.19.0.0/16", "EnableIPv6": true}', "EnableIPv6 is not supported"),
    ],
)
def test_network_config_errors(text: str, message: str) -> None:
    with pytest.raises(FlannelConfigError) as info:
        parse_network_config(text)
    assert message in str(info.value)


CFG = parse_network_config('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}')


def _lease(subnet: str, ip: str, mac: str = "02:00:00:00:00:01") -> Lease:
    return Lease(N(subnet), A(ip), mac)


def test_choose_reuses_the_lease_with_our_public_ip() -> None:
    held = [_lease("198.19.7.0/24", "198.18.0.7"), _lease("198.19.9.0/24", "198.18.0.9")]
    c = choose_subnet(CFG, held, A("198.18.0.9"), previous=N("198.19.3.0/24"))
    assert c.subnet == N("198.19.9.0/24") and c.reuse == held[1] and c.stale is None


def test_choose_drops_our_lease_outside_the_config_then_takes_the_previous_subnet() -> None:
    held = [_lease("198.19.0.0/24", "198.18.0.9")]  # below SubnetMin
    c = choose_subnet(CFG, held, A("198.18.0.9"), previous=N("198.19.3.0/24"))
    assert c.subnet == N("198.19.3.0/24") and c.stale == held[0] and c.reuse is None


def test_choose_skips_a_taken_previous_subnet_and_picks_among_the_first_100_free() -> None:
    held = [_lease("198.19.3.0/24", "198.18.0.3"), _lease("198.19.1.0/24", "198.18.0.1")]
    seen = set()
    for seed in range(200):
        c = choose_subnet(CFG, held, A("198.18.0.9"), N("198.19.3.0/24"), random.Random(seed))
        assert c.subnet not in (N("198.19.3.0/24"), N("198.19.1.0/24"))
        seen.add(c.subnet)
    first_free = {N(f"198.19.{i}.0/24") for i in range(2, 103) if i != 3}
    assert seen <= first_free and len(seen) > 50


def test_out_of_subnets() -> None:
    small = parse_network_config('{"Network": "198.19.0.0/28", "Backend": {"Type": "vxlan"}}')
    held = [_lease(f"198.19.0.{i * 4}/30", f"198.18.0.{i}") for i in (1, 2, 3)]
    with pytest.raises(OutOfSubnets, match="every /30 from 198.19.0.4 to 198.19.0.12"):
        choose_subnet(small, held, A("198.18.0.9"))


def test_subnet_env_and_previous_subnet(tmp_path: object) -> None:
    text = subnet_env(CFG, N("198.19.5.0/24"), 1450)
    assert text == (
        "FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.5.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    path = f"{tmp_path}/run/flannel/subnet.env"
    assert read_previous_subnet(path) is None
    write_subnet_env(path, text)
    assert read_previous_subnet(path) == N("198.19.5.0/24")
    write_subnet_env(path, "FLANNEL_SUBNET=junk\n")
    assert read_previous_subnet(path) is None
