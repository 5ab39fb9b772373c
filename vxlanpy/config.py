"""VTEP configuration: what the CLI flags and config files describe, validated in one place."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from . import privdrop
from .engine import SegmentConfig
from .fdb import DEFAULT_LEARN_RATE, DEFAULT_MAX_LEARNED, Remote
from .gbp import Policy
from .headers import Outer
from .limits import CONFIGURED
from .profiles import PROFILES, profile
from .wire import DEFAULT_SRCPORT_RANGE, VNI_MAX, VXLAN_PORT, parse_mac

__all__ = [
    "ConfigError",
    "SegmentSpec",
    "VtepConfig",
    "parse_srcport",
    "load_config",
    "parse_config",
]

IPV4_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
IPV6_OVERHEAD = 70  # outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8
# the datapath thread's adaptive poll (µs): while packets come closer together than this, it
# polls this long after the last one before sleeping (docs/performance.md: b->a, loss-free rate)
ADAPTIVE_POLL_US = 200
# frames a TAP queues for the datapath (its txqueuelen; the kernel's own default is 1000): room for
# the thread's scheduling gaps at full packet rate (docs/performance.md: the TAP's queue)
TAP_QUEUE = 4096
TUNNEL_GSO_MODES = ("auto", "on", "off")
TAP_QUEUE_MAX = 16384  # at most that many 64 KiB super-frames (offloads) waiting: 1 GiB


class ConfigError(ValueError):
    """A configuration value is wrong; the message names it."""


@dataclass
class SegmentSpec:
    """One VNI served by the VTEP, with its TAP device and tables."""

    vni: int
    tap: str | None = None  # default: vxlan<VNI>
    address: str | None = None  # CIDR put on the TAP
    mtu: int | None = None  # default: underlay MTU - 50 (IPv4) / - 70 (IPv6)
    bridge: str | None = None  # enslave the TAP to this Linux bridge
    mac: str | None = None  # the TAP's MAC (default: the kernel's random one)
    remotes: list[str] = field(default_factory=list)  # flood list (head-end replication)
    group: str | None = None  # multicast group for BUM traffic
    learning: bool = True
    ageing: float = 300.0
    max_addresses: int = 0
    proxy: bool = False
    allow_vlan: bool = False
    fdb: list[tuple[str, str]] = field(default_factory=list)  # (MAC, IP); 00:..:00 = flood
    neigh: list[tuple[str, str]] = field(default_factory=list)  # (IP, MAC)
    max_learned: int = DEFAULT_MAX_LEARNED  # learned MACs at most (0: no limit)
    learn_rate: float = DEFAULT_LEARN_RATE  # new MACs per second per remote VTEP (0: no limit)
    allow: list[str] | str | None = None  # VTEPs accepted: CIDRs and/or "configured"; None: any
    gbp: bool = False  # VXLAN-GBP (the kernel's gbp)
    gbp_group: str | int | None = None  # policy of frames sent: ID[/D][/A]
    gbp_mac: list[tuple[str, str]] = field(default_factory=list)  # (MAC, policy) per source

    @property
    def tap_name(self) -> str:
        return self.tap or f"vxlan{self.vni}"

    def fdb_entries(self) -> list[tuple[bytes, Remote]]:
        return [(parse_mac(mac), Remote.make(ip)) for mac, ip in self.fdb]

    def neigh_entries(self) -> list[tuple[str, bytes]]:
        return [(str(ipaddress.ip_address(ip)), parse_mac(mac)) for ip, mac in self.neigh]

    def segment_config(
        self, local_mac: bytes | None = None, allow: list[str] | str | None = None
    ) -> SegmentConfig:
        """The engine's view of this segment (its device's MAC for loop detection; ``allow``:
        the VTEP's allowlist, for a segment without its own)."""
        same = {k: getattr(self, k) for k in _ENGINE_FIELDS}
        return SegmentConfig(
            **same,
            local_mac=local_mac,
            fdb=self.fdb_entries(),
            neigh=self.neigh_entries(),
            allow=self.allow if self.allow is not None else allow,
            gbp_group=None if self.gbp_group is None else Policy.parse(self.gbp_group),
            gbp_macs={parse_mac(m): Policy.parse(p) for m, p in self.gbp_mac},
        )


# SegmentSpec fields the engine's SegmentConfig takes as they are
_ENGINE_FIELDS = (
    "vni",
    "remotes",
    "group",
    "learning",
    "ageing",
    "max_addresses",
    "proxy",
    "allow_vlan",
    "max_learned",
    "learn_rate",
    "gbp",
)


@dataclass
class VtepConfig:
    """The VTEP: underlay endpoint and UDP settings shared by all segments."""

    segments: list[SegmentSpec]
    local: str | None = None
    dstport: int = VXLAN_PORT
    srcport: tuple[int, int] = DEFAULT_SRCPORT_RANGE
    ttl: int | Literal["inherit", "auto"] | None = None  # None, "auto": the system's default
    tos: int | Literal["inherit"] | None = None  # None: 0; the ECN field is always the inner's
    df: Literal["unset", "set", "inherit"] = "unset"
    dev: str | None = None
    strict: bool = False
    offload: bool = True  # TAP checksum/TSO offloads (IFF_VNET_HDR), segmented in the fast path
    fast_path: bool = True  # the C datapath (cffi backend); False: every frame in Python
    busy_poll: int = 0  # µs to poll for the next packet before sleeping (0: never; C fast path)
    # µs the datapath thread polls after work while packets come closer together than that
    adaptive_poll: int = ADAPTIVE_POLL_US
    tap_queue: int = TAP_QUEUE  # frames each TAP queues until the datapath reads them
    send_thread: bool = True  # C fast path: a thread of its own sends TSO super-frames
    datapath_thread: bool = True  # C fast path: the pumps poll on a C thread of their own
    gro: bool = True  # C fast path with offload: receive with UDP_GRO, coalesce TCP segments
    # TCP super-frames whole (io/tgso.py): "auto" while there is nothing to skip (hostwatch.py)
    tunnel_gso: str = "auto"
    allow: list[str] | str | None = None  # VTEPs accepted by segments without their own list
    user: str | None = None  # switch to this user (name or uid) once TAPs and sockets are open
    run_group: str | None = None  # ... and group (default: the user's); [vtep] group in a file
    metrics: str | None = None  # "ADDR:PORT": serve Prometheus metrics there (metrics.py)
    capture: str | None = None  # write a pcapng capture of every packet's decision to this file
    capture_drops: bool = False  # ... of the dropped packets only
    profile: str | None = None  # the interop profile the defaults came from (profiles.py)
    udpcsum: bool = True  # IPv4: send outer UDP checksums (False: zero, the kernel's noudpcsum)
    udp6zerocsumtx: bool = False  # IPv6: send zero outer UDP checksums
    udp6zerocsumrx: bool = False  # IPv6: accept zero outer UDP checksums
    peer_watch: bool = True  # warn once per peer whose packets show it expects other settings

    def outer(self) -> Outer:
        """The outer header's TOS, TTL and DF as the kernel's ``tos``/``ttl``/``df`` settings
        (validated first)."""
        tos, ttl = self.tos, self.ttl
        return Outer(
            tos=tos if isinstance(tos, int) else 0,
            tos_inherit=tos == "inherit",
            ttl=ttl if isinstance(ttl, int) else 0,
            ttl_inherit=ttl == "inherit",
            df=self.df == "set",
            df_inherit=self.df == "inherit",
            zero_csum=self.zero_csum_tx(),
        )

    def zero_csum_tx(self) -> bool:
        """True if outer UDP checksums are sent as zero (IPv4 ``noudpcsum``, IPv6
        ``udp6zerocsumtx``)."""
        return self.udp6zerocsumtx if self.family() == 6 else not self.udpcsum

    def tunnel_gso_unfit(self) -> str | None:
        """Why these settings leave tunnel GSO out (None: they do not)."""
        if not (self.fast_path and self.offload):
            return "needs the C fast path and offloads"
        return "works over an IPv4 underlay only" if self.family() != 4 else None

    def family(self) -> int:
        """4 or 6: the underlay's IP version (from local, else remotes/group; default 4)."""
        for ip in self._underlay_ips():
            return ipaddress.ip_address(ip).version
        return 4

    def overhead(self) -> int:
        return IPV6_OVERHEAD if self.family() == 6 else IPV4_OVERHEAD

    def _underlay_ips(self) -> list[str]:
        ips = [self.local] if self.local else []
        for s in self.segments:
            ips += s.remotes + ([s.group] if s.group else []) + [ip for _, ip in s.fdb]
        return ips

    def validate(self, *, in_file: bool = False) -> VtepConfig:
        """Check every value; raise ConfigError naming the first wrong one. Returns self.

        ``in_file``: name segment keys as a config file does (``segment[N].key``)."""
        if not self.segments:
            raise ConfigError("no segment configured (give --vni)")
        self.check_settings()
        vnis: set[int] = set()
        taps: set[str] = set()
        for n, s in enumerate(self.segments):
            try:
                _check_segment(s, vnis, taps)
            except ConfigError as exc:
                raise ConfigError(f"segment[{n}].{exc}" if in_file else str(exc)) from None
        versions = {ipaddress.ip_address(ip).version for ip in self._underlay_ips()}
        if len(versions) > 1:
            raise ConfigError("underlay addresses mix IPv4 and IPv6")
        return self

    def check_settings(self) -> VtepConfig:
        """Check the VTEP's own values, not its segments (flannel reads them before its
        segment exists); raise ConfigError naming the first wrong one. Returns self."""
        _port("dstport", self.dstport)
        lo, hi = self.srcport
        _port("srcport", lo)
        _port("srcport", hi)
        if lo > hi:
            raise ConfigError(f"srcport range {lo}:{hi} is empty (MIN must be <= MAX)")
        if self.ttl not in (None, "inherit", "auto") and not _int_in(self.ttl, 1, 255):
            raise ConfigError(f"ttl must be 1..255, 'inherit' or 'auto', got {self.ttl!r}")
        if self.tos not in (None, "inherit") and not _int_in(self.tos, 0, 255):
            raise ConfigError(f"tos must be 0..255 or 'inherit', got {self.tos!r}")
        if not isinstance(self.busy_poll, int) or not 0 <= self.busy_poll <= 1_000_000:
            raise ConfigError(f"busy_poll must be 0..1000000 microseconds, got {self.busy_poll!r}")
        if not _int_in(self.adaptive_poll, 0, 100_000):
            raise ConfigError(
                f"adaptive_poll must be 0..100000 microseconds, got {self.adaptive_poll!r}"
            )
        if not _int_in(self.tap_queue, 16, TAP_QUEUE_MAX):
            raise ConfigError(
                f"tap_queue must be 16..{TAP_QUEUE_MAX} frames, got {self.tap_queue!r}"
            )
        if self.df not in ("unset", "set", "inherit"):
            raise ConfigError(f"df must be 'unset', 'set' or 'inherit', got {self.df!r}")
        if self.tunnel_gso not in TUNNEL_GSO_MODES:
            raise ConfigError(f"tunnel_gso must be 'auto', 'on' or 'off', got {self.tunnel_gso!r}")
        if self.tunnel_gso == "on" and (why := self.tunnel_gso_unfit()):
            raise ConfigError(f"tunnel_gso {why}")
        if self.metrics is not None:
            parse_listen(self.metrics)
        if self.profile is not None and self.profile not in PROFILES:
            raise ConfigError(
                f"profile must be one of {', '.join(sorted(PROFILES))}, got {self.profile!r}"
            )
        if self.run_group is not None and self.user is None:
            raise ConfigError("group needs user (the user to run as)")
        if self.user is not None:
            try:
                privdrop.resolve(self.user, self.run_group)
            except privdrop.PrivilegeError as exc:
                raise ConfigError(str(exc)) from None
        if self.local is not None and _ip("local", self.local).is_multicast:
            raise ConfigError(f"local {self.local} is multicast")
        _check_allow("allow", self.allow)
        return self


def _check_segment(s: SegmentSpec, vnis: set[int], taps: set[str]) -> None:
    if isinstance(s.vni, bool) or not isinstance(s.vni, int) or not 0 <= s.vni <= VNI_MAX:
        raise ConfigError(f"vni must be an integer in 0..{VNI_MAX}, got {s.vni!r}")
    if s.vni in vnis:
        raise ConfigError(f"vni {s.vni} is configured twice")
    vnis.add(s.vni)
    name = s.tap_name
    if not 1 <= len(name) <= 15 or "/" in name or " " in name:
        raise ConfigError(f"tap {name!r} must be 1-15 characters, no '/' or space")
    if name in taps:
        raise ConfigError(f"tap {name} is used twice")
    taps.add(name)
    if s.address is not None:
        try:
            ipaddress.ip_interface(s.address)
        except ValueError:
            raise ConfigError(f"address {s.address!r} is not an IP/prefix") from None
        if "/" not in s.address:
            raise ConfigError(f"address {s.address!r} needs a prefix length (CIDR)")
    if s.mac is not None and _mac("mac", s.mac)[0] & 1:
        raise ConfigError(f"mac {s.mac} is not unicast")
    if s.mtu is not None and not 68 <= s.mtu <= 65535:
        raise ConfigError(f"mtu must be in 68..65535, got {s.mtu}")
    if s.group is not None and not _ip("group", s.group).is_multicast:
        raise ConfigError(f"group {s.group} is not a multicast address")
    for r in s.remotes:
        if _ip("remote", r).is_multicast:
            raise ConfigError(f"remote {r} is multicast: use group")
    if s.ageing < 0:
        raise ConfigError(f"ageing must be >= 0 seconds, got {s.ageing}")
    if s.max_addresses < 0:
        raise ConfigError(f"max_addresses must be >= 0, got {s.max_addresses}")
    if isinstance(s.max_learned, bool) or not isinstance(s.max_learned, int) or s.max_learned < 0:
        raise ConfigError(
            f"max_learned must be an integer >= 0 (0: no limit), got {s.max_learned!r}"
        )
    if (
        isinstance(s.learn_rate, bool)
        or not isinstance(s.learn_rate, int | float)
        or (s.learn_rate < 0)
    ):
        raise ConfigError(f"learn_rate must be a number >= 0 (0: no limit), got {s.learn_rate!r}")
    _check_allow("allow", s.allow)
    if (s.gbp_group is not None or s.gbp_mac) and not s.gbp:
        raise ConfigError("gbp_group and gbp_mac need gbp on (VXLAN-GBP)")
    for what, text in [("gbp_group", s.gbp_group)] + [("gbp_mac", p) for _m, p in s.gbp_mac]:
        if text is not None:
            try:
                Policy.parse(text)
            except ValueError as exc:
                raise ConfigError(f"{what}: {exc}") from None
    for mac, _p in s.gbp_mac:
        if _mac("gbp_mac mac", mac)[0] & 1:
            raise ConfigError(f"gbp_mac mac {mac} is not unicast")
    for mac, ip in s.fdb:
        _mac("fdb mac", mac)
        _ip("fdb dst", ip)
    for ip, mac in s.neigh:
        _ip("neigh ip", ip)
        if _mac("neigh lladdr", mac)[0] & 1:
            raise ConfigError(f"neigh lladdr {mac} is not unicast")


def _check_allow(name: str, allow: list[str] | str | None) -> None:
    """An allowlist: CIDRs (or addresses) and/or "configured"."""
    if allow is None:
        return
    items = [allow] if isinstance(allow, str) else allow
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{name} must be a list of CIDRs or {CONFIGURED!r}, got {allow!r}")
    for item in items:
        if item == CONFIGURED:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{name}: {item!r} is neither a CIDR nor {CONFIGURED!r} (the configured remotes)"
            ) from None


def _port(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{name} must be a UDP port in 1..65535, got {value!r}")


def parse_listen(text: object) -> tuple[str, int]:
    """``"ADDR:PORT"`` (an IPv6 address in brackets: ``"[::1]:9477"``) -> (ADDR, PORT), for
    ``metrics``; ConfigError otherwise."""
    form = 'metrics must be "ADDR:PORT" (an IP address, a TCP port 1..65535)'
    if not isinstance(text, str):
        raise ConfigError(f"{form}, got {text!r}")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs its brackets
    try:
        addr = ipaddress.ip_address(host)
        num = int(port)
    except ValueError:
        raise ConfigError(f"{form}, got {text!r}") from None
    if not sep or not 1 <= num <= 65535 or addr.is_multicast:
        raise ConfigError(f"{form}, got {text!r}")
    return str(addr), num


def _ip(what: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not an IP address") from None


def _mac(what: str, text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a MAC address") from None


def _int_in(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def parse_srcport(text: str) -> tuple[int, int]:
    """``MIN:MAX`` -> (MIN, MAX)."""
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"srcport must be MIN:MAX, got {text!r}") from None
    return lo, hi


# --- config files (TOML) -------------------------------------------------------------------------

_VTEP_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "local": (str, "an IP address string"),
    "dstport": (int, "an integer UDP port"),
    "srcport": ((str, list), 'a "MIN:MAX" string or [MIN, MAX]'),
    "ttl": ((int, str), 'an integer 1..255, "inherit" or "auto"'),
    "tos": ((int, str), 'an integer 0..255 or "inherit"'),
    "df": (str, '"unset", "set" or "inherit"'),
    "dev": (str, "an interface name"),
    "strict": (bool, "true or false"),
    "offload": (bool, "true or false"),
    "fast_path": (bool, "true or false"),
    "busy_poll": (int, "an integer number of microseconds 0..1000000"),
    "adaptive_poll": (int, "an integer number of microseconds 0..100000"),
    "tap_queue": (int, f"an integer number of frames 16..{TAP_QUEUE_MAX}"),
    "send_thread": (bool, "true or false"),
    "datapath_thread": (bool, "true or false"),
    "gro": (bool, "true or false"),
    "tunnel_gso": ((str, bool), '"auto", "on" or "off" (true: "on", false: "off")'),
    "control": (str, "a path"),
    "allow": ((str, list), 'a list of CIDR strings and/or "configured"'),
    "user": ((str, int), "a user name or uid"),
    "group": ((str, int), "a group name or gid (of the user to run as)"),
    "metrics": (str, 'an "ADDR:PORT" string'),
    "capture": (str, "a path (a pcapng file to write)"),
    "capture_drops": (bool, "true or false"),
    "profile": (str, '"linux", "rfc" or "ovs"'),
    "udpcsum": (bool, "true or false"),
    "udp6zerocsumtx": (bool, "true or false"),
    "udp6zerocsumrx": (bool, "true or false"),
    "peer_watch": (bool, "true or false"),
}
_SEGMENT_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "vni": (int, "an integer 0..16777215"),
    "tap": (str, "an interface name"),
    "address": (str, 'a CIDR string like "198.19.0.1/24"'),
    "mtu": (int, "an integer"),
    "bridge": (str, "an interface name"),
    "mac": (str, "a MAC address string"),
    "remotes": (list, "a list of IP address strings"),
    "group": (str, "a multicast IP address string"),
    "learning": (bool, "true or false"),
    "ageing": ((int, float), "a number of seconds"),
    "max_addresses": (int, "an integer"),
    "proxy": (bool, "true or false"),
    "allow_vlan": (bool, "true or false"),
    "fdb": (list, 'a list of tables {mac = "...", dst = "..."}'),
    "neigh": (list, 'a list of tables {ip = "...", lladdr = "..."}'),
    "max_learned": (int, "an integer (0: no limit)"),
    "learn_rate": ((int, float), "a number of MACs per second (0: no limit)"),
    "allow": ((str, list), 'a list of CIDR strings and/or "configured"'),
    "gbp": (bool, "true or false"),
    "gbp_group": ((str, int), 'a group policy ID 0..65535, or "ID/D/A" with its flags'),
    "gbp_mac": (list, 'a list of tables {mac = "...", group = "..."}'),
}


def _check_table(
    path: str, where: str, table: object, keys: dict[str, tuple[type | tuple[type, ...], str]]
) -> dict[str, object]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    for k, v in table.items():
        if k not in keys:
            raise ConfigError(
                f"{path}: {where}: unknown key {k!r} (known: {', '.join(sorted(keys))})"
            )
        typ, expect = keys[k]
        if isinstance(v, bool) and typ is not bool and not (isinstance(typ, tuple) and bool in typ):
            raise ConfigError(f"{path}: {where}.{k} must be {expect}, got {v!r}")
        if not isinstance(v, typ):
            raise ConfigError(f"{path}: {where}.{k} must be {expect}, got {v!r}")
    return table


def _pairs(path: str, where: str, items: list[object], a: str, b: str) -> list[tuple[str, str]]:
    out = []
    for n, item in enumerate(items):
        w = f"{where}[{n}]"
        if not isinstance(item, dict) or set(item) != {a, b}:
            raise ConfigError(f"{path}: {w} must be a table with exactly the keys {a!r}, {b!r}")
        if not isinstance(item[a], str) or not isinstance(item[b], str):
            raise ConfigError(f"{path}: {w}: {a!r} and {b!r} must be strings")
        out.append((item[a], item[b]))
    return out


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def parse_toml(raw: bytes, path: str, sections: set[str]) -> dict[str, object]:
    """The TOML text ``raw``'s tables; ConfigError naming ``path`` if it cannot be decoded or
    parsed, or has a section not in ``sections``."""
    import tomllib

    try:
        data = tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(data) - sections
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    return data


def read_toml(path: str, sections: set[str]) -> dict[str, object]:
    """A TOML file's tables (see :func:`parse_toml`)."""
    return parse_toml(_read(path), path, sections)


def load_config(path: str) -> tuple[VtepConfig, str | None]:
    """Read a TOML config file: ``([vtep] + [[segment]] ...)``. Returns the validated config and
    the control-socket path it names (or None). Every error names the file and the key."""
    return parse_config(_read(path), path)


def parse_config(raw: bytes, path: str = "<config>") -> tuple[VtepConfig, str | None]:
    """:func:`load_config` of the file's contents ``raw``; errors name ``path``."""
    data = parse_toml(raw, path, {"vtep", "segment"})
    vt = _check_table(path, "[vtep]", data.get("vtep", {}), _VTEP_KEYS)
    segs = data.get("segment", [])
    if not isinstance(segs, list) or not segs:
        raise ConfigError(f"{path}: at least one [[segment]] table is needed")
    specs = []
    for n, raw in enumerate(segs):
        where = f"segment[{n}]"
        st = _check_table(path, where, raw, _SEGMENT_KEYS)
        if "vni" not in st:
            raise ConfigError(f"{path}: {where}: 'vni' is required")
        kw = dict(st)
        remotes = kw.get("remotes", [])
        assert isinstance(remotes, list)
        if not all(isinstance(r, str) for r in remotes):
            raise ConfigError(f"{path}: {where}.remotes must be a list of IP address strings")
        fdb = kw.pop("fdb", [])
        neigh = kw.pop("neigh", [])
        gbp_mac = kw.pop("gbp_mac", [])
        assert isinstance(fdb, list) and isinstance(neigh, list) and isinstance(gbp_mac, list)
        spec = SegmentSpec(**kw)  # type: ignore[arg-type]
        spec.ageing = float(spec.ageing)
        spec.fdb = _pairs(path, f"{where}.fdb", fdb, "mac", "dst")
        spec.neigh = _pairs(path, f"{where}.neigh", neigh, "ip", "lladdr")
        spec.gbp_mac = _pairs(path, f"{where}.gbp_mac", gbp_mac, "mac", "group")
        specs.append(spec)
    name = vt.get("profile")
    try:
        prof = profile(name if isinstance(name, str) else None)
    except ValueError as exc:
        raise ConfigError(f"{path}: [vtep].{exc}") from None
    srcport = vt.get("srcport", list(prof.srcport))
    if isinstance(srcport, list):
        if len(srcport) != 2 or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in srcport
        ):
            raise ConfigError(f"{path}: [vtep].srcport must be [MIN, MAX] integers")
        sp = (int(srcport[0]), int(srcport[1]))
    else:
        try:
            sp = parse_srcport(str(srcport))
        except ConfigError as exc:
            raise ConfigError(f"{path}: [vtep].{exc}") from None
    control = vt.get("control")
    tg = vt.get("tunnel_gso", "auto")  # true and false as before "auto": "on" and "off"
    cfg = VtepConfig(
        segments=specs,
        local=vt.get("local"),  # type: ignore[arg-type]
        dstport=vt.get("dstport", prof.dstport),  # type: ignore[arg-type]
        srcport=sp,
        ttl=vt.get("ttl"),  # type: ignore[arg-type]
        tos=vt.get("tos"),  # type: ignore[arg-type]
        df=vt.get("df", prof.df),  # type: ignore[arg-type]
        dev=vt.get("dev"),  # type: ignore[arg-type]
        strict=bool(vt.get("strict", prof.strict)),
        offload=bool(vt.get("offload", True)),
        fast_path=bool(vt.get("fast_path", True)),
        busy_poll=vt.get("busy_poll", 0),  # type: ignore[arg-type]
        adaptive_poll=vt.get("adaptive_poll", ADAPTIVE_POLL_US),  # type: ignore[arg-type]
        tap_queue=vt.get("tap_queue", TAP_QUEUE),  # type: ignore[arg-type]
        send_thread=bool(vt.get("send_thread", True)),
        datapath_thread=bool(vt.get("datapath_thread", True)),
        gro=bool(vt.get("gro", True)),
        tunnel_gso=("on" if tg else "off") if isinstance(tg, bool) else str(tg),
        allow=vt.get("allow"),  # type: ignore[arg-type]
        user=None if vt.get("user") is None else str(vt["user"]),
        run_group=None if vt.get("group") is None else str(vt["group"]),
        metrics=vt.get("metrics"),  # type: ignore[arg-type]
        capture=vt.get("capture"),  # type: ignore[arg-type]
        capture_drops=bool(vt.get("capture_drops", False)),
        profile=name if isinstance(name, str) else None,
        udpcsum=bool(vt.get("udpcsum", prof.udpcsum)),
        udp6zerocsumtx=bool(vt.get("udp6zerocsumtx", prof.udp6zerocsumtx)),
        udp6zerocsumrx=bool(vt.get("udp6zerocsumrx", prof.udp6zerocsumrx)),
        peer_watch=bool(vt.get("peer_watch", True)),
    )
    try:
        cfg.validate(in_file=True)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg, control if isinstance(control, str) else None
