"""Privilege drop: a running VTEP switches from root to another user once its TAPs and sockets
are open, keeping only the capabilities it still needs.

What is still needed is decided at run time (:func:`needed_capabilities`):

- ``CAP_NET_ADMIN``, if the send sockets' buffer size (8 MiB) is over ``net.core.wmem_max``:
  per-flow send sockets are opened lazily, as flows appear, and set their buffer with
  ``SO_SNDBUFFORCE``; without it they would be capped at ``wmem_max`` (208 KiB by default)
  and drop bursts. Nothing else at run time needs it: the TAPs are closed (and so removed) by
  closing their fds, and netlink is only used at start.
- ``CAP_NET_BIND_SERVICE``, if the source-port range starts below
  ``net.ipv4.ip_unprivileged_port_start`` (1024): those ports are also bound lazily.

Python's standard library has ``setresuid``/``setgroups`` but no ``capset``: the two calls it
lacks, ``prctl(PR_SET_KEEPCAPS)`` and ``capset(2)``, are made through ctypes (glibc exports
both). The PyPI wrappers (python-prctl, last released 2020) are C extensions that need the
libcap headers to build, for two system calls.

Order (as capabilities(7) describes): keep capabilities across the uid change
(``PR_SET_KEEPCAPS``), drop supplementary groups, set the gid then the uid (real, effective and
saved: there is no way back to root), then set the permitted and effective sets to exactly what
is needed, and check the result. glibc applies the uid change to every thread of the process;
threads other than the caller (the C sender thread, the default executor's) keep no
capabilities (``PR_SET_KEEPCAPS`` is per thread), and none needs any.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from dataclasses import dataclass

__all__ = [
    "Identity",
    "PrivilegeError",
    "resolve",
    "needed_capabilities",
    "drop",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "cap_names",
]

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
_CAP_NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN"}
PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The user or group does not exist, or the switch failed; the message says which."""


@dataclass(frozen=True)
class Identity:
    """Whom to run as: ``name`` is the user's name (or its uid as a string)."""

    name: str
    uid: int
    gid: int


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def resolve(user: str, group: str | None = None) -> Identity:
    """``user`` (name or uid) and ``group`` (name or gid; default: the user's primary group)."""
    uid, gid, name = _number(user), None, user
    try:
        pw = pwd.getpwnam(user) if uid is None else pwd.getpwuid(uid)
    except (KeyError, ValueError, OverflowError):  # unknown, NUL in the name, out of range
        if uid is None:
            raise PrivilegeError(f"user {user!r} does not exist") from None
    else:
        uid, gid, name = pw.pw_uid, pw.pw_gid, pw.pw_name
    if group is not None:
        gid = _number(group)
        try:
            gid = grp.getgrnam(group).gr_gid if gid is None else grp.getgrgid(gid).gr_gid
        except (KeyError, ValueError, OverflowError):
            if gid is None:
                raise PrivilegeError(f"group {group!r} does not exist") from None
    if uid is None or gid is None:
        raise PrivilegeError(f"user {user} has no passwd entry: give the group too")
    if not (0 <= uid < 0xFFFFFFFF and 0 <= gid < 0xFFFFFFFF):
        raise PrivilegeError(f"user {user} / group {group}: ids must be below 4294967295")
    if uid == 0:
        raise PrivilegeError("user is root: nothing to drop")
    return Identity(name, uid, gid)


def _sysctl(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def needed_capabilities(sndbuf: int, srcport_min: int) -> set[int]:
    """The capabilities a running VTEP still uses (see the module docstring)."""
    caps = set()
    if sndbuf > _sysctl("/proc/sys/net/core/wmem_max", 0):
        caps.add(CAP_NET_ADMIN)
    if srcport_min < _sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start", 1024):
        caps.add(CAP_NET_BIND_SERVICE)
    return caps


def cap_names(caps: set[int]) -> str:
    return ", ".join(_CAP_NAMES.get(c, str(c)) for c in sorted(caps)) or "none"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(r: int, what: str) -> None:
    if r != 0:
        e = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(e)}")


def _capset(caps: set[int]) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for c in caps:
        data[c // 32].effective |= 1 << (c % 32)
        data[c // 32].permitted |= 1 << (c % 32)
    _check(_libc().capset(ctypes.byref(hdr), data), "capset")


def _status_caps() -> dict[str, int]:
    out = {}
    with open("/proc/thread-self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                out[key] = int(value, 16)
    return out


def drop(ident: Identity, keep: set[int]) -> None:
    """Become ``ident`` for good, keeping exactly the capabilities ``keep``; PrivilegeError
    (the process is then in an undefined state: exit) if any step fails."""
    libc = _libc()
    try:
        _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setresgid(ident.gid, ident.gid, ident.gid)
        os.setresuid(ident.uid, ident.uid, ident.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to user {ident.name}: {exc.strerror}") from None
    _capset(keep)
    _check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    mask = sum(1 << c for c in keep)
    got = _status_caps()
    want = {"CapInh": 0, "CapPrm": mask, "CapEff": mask, "CapAmb": 0}
    if got != want or os.getresuid() != (ident.uid,) * 3 or os.getresgid() != (ident.gid,) * 3:
        raise PrivilegeError(f"privilege drop did not take: {got}")
