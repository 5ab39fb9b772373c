"""io/netlink.py's lookups against a stand-in for pyroute2's IPRoute: how next_hop asks for
the neighbour (one entry by address, the filtered dump where the kernel refuses that)."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from vxlanpy.io import netlink


class _Msg(dict[str, Any]):
    def __init__(self, attrs: dict[str, Any], **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class _Ipr:
    """Answers a route to 198.18.0.2 by device 3, and its neighbour as ``neigh_get`` says."""

    def __init__(self, neigh_get: int | None) -> None:
        self.neigh_get = neigh_get  # None: answers; else the errno it fails with
        self.calls: list[str] = []

    def route(self, cmd: str, dst: str) -> list[_Msg]:
        self.calls.append("route")
        return [_Msg({"RTA_OIF": 3, "RTA_PREFSRC": "198.18.0.1"}, type=1)]

    def neigh(self, cmd: str, dst: str, ifindex: int) -> list[_Msg]:
        self.calls.append("neigh get")
        if self.neigh_get is not None:
            raise NetlinkError(self.neigh_get)
        return [_Msg({"NDA_LLADDR": "02:00:00:00:00:02"}, state=0x02)]

    def get_neighbours(self, ifindex: int, dst: str) -> list[_Msg]:
        self.calls.append("neigh dump")
        return [_Msg({"NDA_LLADDR": "02:00:00:00:00:02"}, state=0x04)]

    def get_links(self, index: int) -> list[_Msg]:
        self.calls.append("link")
        return [_Msg({"IFLA_ADDRESS": "02:00:00:00:00:01"})]


HOP = (3, bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), "198.18.0.1")


def test_one_neighbour_entry_is_asked_for() -> None:
    ipr, macs = _Ipr(None), {}
    assert netlink.next_hop("198.18.0.2", ipr, macs) == HOP
    assert netlink.next_hop("198.18.0.2", ipr, macs) == HOP
    assert ipr.calls == ["route", "neigh get", "link", "route", "neigh get"]  # MAC asked once
    assert macs == {3: HOP[1]}


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EOPNOTSUPP])
def test_a_kernel_without_the_single_get_gets_the_dump(code: int) -> None:
    ipr = _Ipr(code)
    assert netlink.next_hop("198.18.0.2", ipr) == HOP
    assert ipr.calls == ["route", "neigh get", "neigh dump", "link"]


def test_no_entry_and_other_errors_are_no_hop() -> None:
    assert netlink.next_hop("198.18.0.2", _Ipr(errno.ENOENT)) is None  # not resolved yet
    ipr = _Ipr(errno.EPERM)
    assert netlink.next_hop("198.18.0.2", ipr) is None  # an error: no link, not a crash
    assert "neigh dump" not in ipr.calls
