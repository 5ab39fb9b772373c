"""flannel's data in etcd, as flanneld writes and reads it: the network config and subnet leases.

Pure: no I/O. The formats follow flannel's ``pkg/subnet/config.go`` (``ParseConfig``,
``CheckNetworkConfig``), ``pkg/lease/lease.go`` (``LeaseAttrs``), ``pkg/subnet/subnet.go``
(``MakeSubnetKey``/``ParseSubnetKey``) and ``pkg/backend/vxlan`` (``vxlanLeaseAttrs``):

- ``<prefix>/config``: ``{"Network": "198.19.0.0/16", "SubnetLen": 24, "SubnetMin": ...,
  "SubnetMax": ..., "Backend": {"Type": "vxlan", "VNI": 1, "Port": 0, "GBP": false, "MTU": 0}}``
- ``<prefix>/subnets/198.19.5.0-24``: ``{"PublicIP": "198.18.0.5", "PublicIPv6": null,
  "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": "02:..."}}``

Go's ``encoding/json`` matches field names case-insensitively, so the decoders here do too.
Only IPv4 networks are handled (``EnableIPv6`` is refused, ``PublicIPv6`` ignored).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from ..wire import VXLAN_PORT_LINUX, format_mac, parse_mac

__all__ = [
    "DEFAULT_PREFIX",
    "FlannelConfigError",
    "LeaseError",
    "NetworkConfig",
    "Lease",
    "parse_network_config",
    "subnet_key",
    "parse_subnet_key",
    "decode_lease",
]

DEFAULT_PREFIX = "/coreos.com/network"
ENCAP_OVERHEAD = 50  # flannel's vxlan encapOverhead: outer Ethernet + IPv4 + UDP + VXLAN

_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


class FlannelConfigError(ValueError):
    """The network config in etcd is missing or wrong; the message says which field."""


class LeaseError(ValueError):
    """A subnet lease in etcd cannot be used; the message names the key and the reason."""


def _fields(obj: object, what: str) -> dict[str, Any]:
    """A JSON object with its keys folded to lower case (Go's case-insensitive match)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return {str(k).lower(): v for k, v in obj.items()}


def _ipv4(value: object, what: str) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an IPv4 address string, got {value!r}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IPv4 address") from None


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")
    return value


@dataclass(frozen=True)
class NetworkConfig:
    """``<prefix>/config`` after flannel's defaults and checks (``CheckNetworkConfig``)."""

    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend_type: str = "vxlan"
    vni: int = 1
    port: int = VXLAN_PORT_LINUX  # "Port": 0 means the kernel's default, 8472
    gbp: bool = False
    mtu: int = 0  # 0: the underlay device's MTU (the device gets MTU - 50)
    learning: bool = False
    direct_routing: bool = False

    @property
    def device(self) -> str:
        """The device flanneld creates: ``flannel.<VNI>``."""
        return f"flannel.{self.vni}"

    def contains(self, subnet: ipaddress.IPv4Network) -> bool:
        """True if ``subnet`` is a lease this config could have handed out."""
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )


def parse_network_config(text: str | bytes) -> NetworkConfig:
    """Parse and check ``<prefix>/config`` as flanneld does; FlannelConfigError if wrong."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FlannelConfigError(f"not JSON: {exc}") from None
    try:
        return _network_config(_fields(raw, "the config"))
    except ValueError as exc:
        raise FlannelConfigError(str(exc)) from None


def _network_config(f: dict[str, Any]) -> NetworkConfig:
    if f.get("enableipv6"):
        raise ValueError("EnableIPv6 is not supported (IPv4 networks only)")
    if f.get("enableipv4") is False:
        raise ValueError("EnableIPv4 is false: an IPv4 Network is needed")
    if "network" not in f:
        raise ValueError("Network is missing")
    text = f["network"]
    try:
        if not isinstance(text, str) or "/" not in text:
            raise ValueError
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(f"Network {text!r} is not an IPv4 CIDR") from None
    slen = _int(f.get("subnetlen", 0), "SubnetLen", 0, 32)
    if slen:
        if slen > 30:
            raise ValueError("SubnetLen must be less than /31")
        if slen < net.prefixlen + 2:
            raise ValueError("Network must be able to accommodate at least four subnets")
    elif net.prefixlen > 28:
        raise ValueError("Network is too small: the minimum useful prefix is /28")
    else:
        slen = 24 if net.prefixlen <= 22 else net.prefixlen + 2
    size = 1 << (32 - slen)
    lo = net.network_address + size
    hi = net.broadcast_address + 1 - size
    if f.get("subnetmin") is not None:
        lo = _ipv4(f["subnetmin"], "SubnetMin")
        if lo not in net:
            raise ValueError("SubnetMin is not in the range of the Network")
    if f.get("subnetmax") is not None:
        hi = _ipv4(f["subnetmax"], "SubnetMax")
        if hi not in net:
            raise ValueError("SubnetMax is not in the range of the Network")
    for name, addr in (("SubnetMin", lo), ("SubnetMax", hi)):
        if int(addr) % size:
            raise ValueError(f"{name} is not on a SubnetLen boundary: {addr}")
    be = _fields(f.get("backend") or {"type": "udp"}, "Backend")
    btype = be.get("type", "")
    if btype != "vxlan":
        raise ValueError(f"Backend.Type is {btype!r}: only 'vxlan' is supported")
    port = _int(be.get("port", 0), "Backend.Port", 0, 65535)
    return NetworkConfig(
        network=net,
        subnet_len=slen,
        subnet_min=lo,
        subnet_max=hi,
        backend_type=btype,
        vni=_int(be.get("vni", 1), "Backend.VNI", 0, 0xFFFFFF),
        port=port or VXLAN_PORT_LINUX,
        gbp=_bool(be.get("gbp", False), "Backend.GBP"),
        mtu=_int(be.get("mtu", 0), "Backend.MTU", 0, 65535),
        learning=_bool(be.get("learning", False), "Backend.Learning"),
        direct_routing=_bool(be.get("directrouting", False), "Backend.DirectRouting"),
    )


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def subnet_key(subnet: ipaddress.IPv4Network) -> str:
    """The lease key's last part: ``198.19.5.0-24`` (flannel's ``MakeSubnetKey``)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> ipaddress.IPv4Network | None:
    """The subnet of a lease key (``.../subnets/198.19.5.0-24``), or None if it is not one.

    As flannel's ``ParseSubnetKey``: the match is anchored at the end; a dual-stack suffix
    (``&fd00::-64``) is accepted and ignored."""
    m = _KEY_RE.search(key)
    if m is None:
        return None
    try:
        return ipaddress.IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)
    except ValueError:
        return None


@dataclass(frozen=True)
class Lease:
    """One node's lease: its subnet, underlay (public) IP and VTEP MAC."""

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    vtep_mac: str  # aa:bb:cc:dd:ee:ff, lower case
    vni: int = 1
    backend_type: str = "vxlan"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The address on the node's ``flannel.<VNI>`` (``<subnet>.0/32``): the route's next
        hop and the neighbour entry's IP on every other node."""
        return self.subnet.network_address

    def encode(self) -> str:
        """The JSON value flanneld writes (``json.Marshal(LeaseAttrs)``), byte for byte."""
        data = {"VNI": self.vni, "VtepMAC": self.vtep_mac}
        attrs = {
            "PublicIP": str(self.public_ip),
            "PublicIPv6": None,
            "BackendType": self.backend_type,
            "BackendData": data,
        }
        return json.dumps(attrs, separators=(",", ":"))


def decode_lease(key: str, value: str | bytes) -> Lease:
    """A lease from its etcd key and value; LeaseError naming the key and what is wrong.

    A lease of another backend type raises LeaseError too (flanneld ignores those with a
    warning: the caller does the same)."""
    subnet = parse_subnet_key(key)
    if subnet is None:
        raise LeaseError(f"{key}: not a subnet key (want A.B.C.D-LEN)")
    try:
        raw = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise LeaseError(f"{key}: value is not JSON: {_preview(value)}") from None
    try:
        f = _fields(raw, "value")
        btype = f.get("backendtype", "")
        if btype != "vxlan":
            raise ValueError(f"foreign backend type {btype!r} (not vxlan)")
        public = _ipv4(f.get("publicip"), "PublicIP")
        if public.is_unspecified or public.is_multicast:
            raise ValueError(f"PublicIP {public} is not a unicast address")
        data = _fields(f.get("backenddata"), "BackendData")
        mac_text = data.get("vtepmac")
        if not isinstance(mac_text, str):
            raise ValueError(f"BackendData.VtepMAC must be a MAC string, got {mac_text!r}")
        try:
            mac = parse_mac(mac_text)
        except ValueError:
            raise ValueError(f"BackendData.VtepMAC {mac_text!r} is not a MAC address") from None
        if mac[0] & 1:
            raise ValueError(f"BackendData.VtepMAC {mac_text} is not unicast")
        vni = _int(data.get("vni", 1), "BackendData.VNI", 0, 0xFFFFFF)
    except ValueError as exc:
        raise LeaseError(f"{key}: {exc}") from None
    return Lease(subnet, public, format_mac(mac), vni, btype)


def _preview(value: str | bytes) -> str:
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
