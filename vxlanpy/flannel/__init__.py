"""A flannel-compatible control plane on etcd for vxlanpy (and for kernel vxlan nodes).

``vxlanpy-tunnel flannel`` runs :class:`~vxlanpy.flannel.agent.FlannelAgent`: it leases a
subnet in etcd in flanneld's format, and programs, for every other node, a route, a permanent
neighbour entry and a permanent FDB entry, into a vxlanpy VTEP or a kernel vxlan device.

Modules, one concern each: ``lease`` (the etcd formats, pure), ``subnets`` (choosing a subnet,
``subnet.env``), ``registry`` (leases -> peers -> operations, sans-I/O), ``etcd`` (the client),
``netlink`` (kernel tables), ``dataplane`` (the interface and the kernel backend),
``vxlanpy_backend``, ``agent`` (the loop), ``config`` (flags and TOML), ``etcd_cluster`` (etcd
processes for tests and the lab), ``lab``.
"""

from .agent import AgentError, FlannelAgent
from .config import AgentConfig, load_agent_config
from .lease import Lease, NetworkConfig, decode_lease, parse_network_config

__all__ = [
    "AgentConfig",
    "AgentError",
    "FlannelAgent",
    "Lease",
    "NetworkConfig",
    "decode_lease",
    "load_agent_config",
    "parse_network_config",
]
