"""The flannel agent's own settings: from ``vxlanpy-tunnel flannel`` flags or a TOML file.

The file has a ``[flannel]`` table (the flags' names with ``_``) and, for the vxlanpy
dataplane, an optional ``[vtep]`` table with the data-path keys of ``run``'s config file
(``offload``, ``fast_path``, ``send_thread``, ``datapath_thread``, ``gro``, ``busy_poll``,
``adaptive_poll``, ``tap_queue``, ``srcport``, ``ttl``, ``tos``, ``df``, ``strict``). Errors
name the file and the key, as ``vxlanpy.config`` does::

    [flannel]
    etcd_endpoints = ["http://198.18.0.201:2379", "http://198.18.0.202:2379"]
    etcd_prefix = "/coreos.com/network"
    iface = "eth0"
    backend = "vxlanpy"          # or "kernel"
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from ..config import _VTEP_KEYS as RUN_VTEP_KEYS
from ..config import (
    ConfigError,
    VtepConfig,
    _check_table,
    parse_srcport,
    read_toml,
)
from .etcd import parse_endpoints
from .lease import DEFAULT_PREFIX

__all__ = ["AgentConfig", "load_agent_config", "DEFAULT_SUBNET_FILE"]

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DAY = 24 * 3600


@dataclass
class AgentConfig:
    """One flannel node."""

    etcd_endpoints: list[tuple[str, int]]
    etcd_prefix: str = DEFAULT_PREFIX
    iface: str | None = None  # interface name or address for flannel traffic
    public_ip: str | None = None  # the PublicIP to advertise (default: the interface's)
    backend: Literal["vxlanpy", "kernel"] = "vxlanpy"
    subnet_file: str = DEFAULT_SUBNET_FILE
    lease_ttl: int = DAY  # flanneld: 24 h
    renew_margin: int = 3600  # renew this long before expiry (flanneld: 60 min)
    release_on_exit: bool = False  # revoke the lease on exit (flanneld keeps it)
    connect_timeout: float = 10.0  # at start: give up if no etcd member answers by then
    control: str | None = None  # vxlanpy dataplane: control socket path (None: default)
    vtep: VtepConfig | None = None  # vxlanpy dataplane: data-path settings
    ip_masq: bool = False  # written to subnet.env only (no masquerading is set up)

    def validate(self) -> AgentConfig:
        if not self.etcd_endpoints:
            raise ConfigError("no etcd endpoint given (--etcd-endpoints)")
        if not self.etcd_prefix.startswith("/") or self.etcd_prefix.endswith("/"):
            raise ConfigError(
                f"etcd prefix {self.etcd_prefix!r} must start with '/' and not end with one"
            )
        if self.public_ip is not None:
            try:
                ip = ipaddress.IPv4Address(self.public_ip)
            except ValueError:
                raise ConfigError(f"public IP {self.public_ip!r} is not an IPv4 address") from None
            if ip.is_multicast or ip.is_unspecified:
                raise ConfigError(f"public IP {self.public_ip} is not a unicast address")
        if self.backend not in ("vxlanpy", "kernel"):
            raise ConfigError(f"backend must be 'vxlanpy' or 'kernel', got {self.backend!r}")
        if not 10 <= self.lease_ttl <= 7 * DAY:
            raise ConfigError(f"lease TTL must be 10..{7 * DAY} seconds, got {self.lease_ttl}")
        if not 1 <= self.renew_margin < self.lease_ttl:
            raise ConfigError(
                f"renew margin must be 1..{self.lease_ttl - 1} seconds (less than the lease "
                f"TTL), got {self.renew_margin}"
            )
        if self.connect_timeout <= 0:
            raise ConfigError(f"connect timeout must be > 0, got {self.connect_timeout}")
        return self


def endpoints(text: str | list[str]) -> list[tuple[str, int]]:
    try:
        return parse_endpoints(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_T = tuple[type | tuple[type, ...], str]
_FLANNEL_KEYS: dict[str, _T] = {
    "etcd_endpoints": ((str, list), 'a list of URLs like "http://198.18.0.201:2379"'),
    "etcd_prefix": (str, 'a key prefix like "/coreos.com/network"'),
    "iface": (str, "an interface name or address"),
    "public_ip": (str, "an IPv4 address string"),
    "backend": (str, '"vxlanpy" or "kernel"'),
    "subnet_file": (str, "a path"),
    "lease_ttl": (int, "an integer number of seconds"),
    "renew_margin": (int, "an integer number of seconds"),
    "release_on_exit": (bool, "true or false"),
    "connect_timeout": ((int, float), "a number of seconds"),
    "control": (str, "a path"),
    "ip_masq": (bool, "true or false"),
}
# run's [vtep] keys as its config file types them, and four that flannel takes narrower
_VTEP_KEYS: dict[str, _T] = {
    **{
        k: RUN_VTEP_KEYS[k]
        for k in (
            "offload fast_path send_thread datapath_thread gro busy_poll adaptive_poll "
            "tap_queue strict"
        ).split()
    },
    "srcport": (str, 'a "MIN:MAX" string'),
    "ttl": (int, "an integer 1..255"),
    "tos": (int, "an integer 0..255"),
    "df": (str, '"unset" or "set"'),
}


def load_agent_config(path: str) -> AgentConfig:
    """Read a TOML file with ``[flannel]`` (and optionally ``[vtep]``); ConfigError naming the
    file and the key on any problem."""
    data = read_toml(path, {"flannel", "vtep"})
    if "flannel" not in data:
        raise ConfigError(f"{path}: a [flannel] table is needed")
    fl = dict(_check_table(path, "[flannel]", data["flannel"], _FLANNEL_KEYS))
    vt = _check_table(path, "[vtep]", data.get("vtep", {}), _VTEP_KEYS)
    if "etcd_endpoints" not in fl:
        raise ConfigError(f"{path}: [flannel].etcd_endpoints is required")
    raw = fl.pop("etcd_endpoints")
    if isinstance(raw, list) and not all(isinstance(e, str) for e in raw):
        raise ConfigError(f"{path}: [flannel].etcd_endpoints must be a list of URL strings")
    try:
        eps = endpoints(raw)  # type: ignore[arg-type]
        vtep = _vtep_config(vt) if vt else None
        cfg = AgentConfig(etcd_endpoints=eps, vtep=vtep, **fl)  # type: ignore[arg-type]
        if isinstance(cfg.connect_timeout, int):
            cfg.connect_timeout = float(cfg.connect_timeout)
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _vtep_config(vt: dict[str, object]) -> VtepConfig:
    kw = dict(vt)
    if "srcport" in kw:
        kw["srcport"] = parse_srcport(str(kw["srcport"]))
    # every value checked now, when the file is read (the agent's segment comes later)
    return VtepConfig(segments=[], **kw).check_settings()  # type: ignore[arg-type]
