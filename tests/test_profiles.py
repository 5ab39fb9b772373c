"""Interop profiles and the UDP checksum policy, from the command line and from a config file:
a profile's defaults, explicit settings winning, the outer header's zero-checksum flag per
underlay family, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vxlanpy.cli import build_parser
from vxlanpy.cli.run import config_from_args
from vxlanpy.config import ConfigError, VtepConfig, load_config
from vxlanpy.profiles import DEFAULT, PROFILES

BASE = ["run", "--vni", "7", "--local", "198.18.0.1", "--remote", "198.18.0.2"]
BASE6 = ["run", "--vni", "7", "--local", "2001:2::1", "--remote", "2001:2::2"]


def _cli(*args: str, base: list[str] = BASE) -> VtepConfig:
    return config_from_args(build_parser().parse_args([*base, *args]))[0]


def _settings(c: VtepConfig) -> tuple[object, ...]:
    return (c.dstport, c.srcport, c.strict, c.udpcsum, c.udp6zerocsumtx, c.udp6zerocsumrx, c.df)


@pytest.mark.parametrize("name", [None, *PROFILES])
def test_profile_defaults_from_the_command_line(name: str | None) -> None:
    c = _cli(*(["--profile", name] if name else []))
    p = PROFILES[name] if name else DEFAULT
    want = (p.dstport, p.srcport, p.strict, p.udpcsum, p.udp6zerocsumtx, p.udp6zerocsumrx, p.df)
    assert _settings(c) == want
    assert c.profile == name
    assert c.outer().zero_csum == (not p.udpcsum)  # IPv4 underlay


def test_flags_given_win_over_the_profile() -> None:
    c = _cli("--profile", "ovs", "--dstport", "8472", "--srcport", "1000:2000", "--df", "unset")
    c2 = _cli("--profile", "ovs", "--udpcsum", "--noudp6zerocsumrx")
    assert (c.dstport, c.srcport, c.df, c.strict, c.udpcsum) == (8472, (1000, 2000), "unset",
                                                                  True, False)  # fmt: skip
    assert (c2.udpcsum, c2.udp6zerocsumrx, c2.udp6zerocsumtx) == (True, False, True)
    assert c2.outer().zero_csum is False


def test_ipv6_zero_checksums_follow_udp6zerocsumtx() -> None:
    assert _cli(base=BASE6).outer().zero_csum is False
    assert _cli("--udp6zerocsumtx", base=BASE6).outer().zero_csum is True
    assert _cli("--noudpcsum", base=BASE6).outer().zero_csum is False  # an IPv4 setting
    assert _cli("--profile", "ovs", base=BASE6).outer().zero_csum is True


def test_exclusive_flags_and_unknown_profile() -> None:
    from vxlanpy.cli.common import UsageError

    with pytest.raises(UsageError, match="not allowed with"):
        _cli("--udpcsum", "--noudpcsum")
    with pytest.raises(UsageError, match="invalid choice"):
        _cli("--profile", "cisco")


def test_profile_in_a_config_file(tmp_path: Path) -> None:
    f = tmp_path / "v.toml"
    f.write_text('[vtep]\nprofile = "ovs"\ndstport = 4790\n\n[[segment]]\nvni = 1\n')
    c, _ = load_config(str(f))
    p = PROFILES["ovs"]
    assert _settings(c) == (4790, p.srcport, True, False, True, True, "set")
    f.write_text('[vtep]\nprofile = "cisco"\n\n[[segment]]\nvni = 1\n')
    with pytest.raises(ConfigError, match="profile must be one of linux, ovs, rfc"):
        load_config(str(f))
    f.write_text('[vtep]\nudpcsum = "no"\n\n[[segment]]\nvni = 1\n')
    with pytest.raises(ConfigError, match="udpcsum must be true or false"):
        load_config(str(f))


def test_no_peer_watch() -> None:
    assert _cli().peer_watch is True
    assert _cli("--no-peer-watch").peer_watch is False
