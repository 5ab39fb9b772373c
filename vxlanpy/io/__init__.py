"""The I/O layer: TAP devices, UDP transport, netlink configuration. Thin by design:
every forwarding decision is the engine's (:mod:`vxlanpy.engine`)."""
