"""An etcd v3 client for the agent: aetcd (asyncio gRPC) behind a small typed interface.

aetcd talks to one endpoint per client; this wrapper holds the list (``--etcd-endpoints``) and
moves to the next member when a call fails with a connection error (``failover``). Every
failure is an ``EtcdError`` with a one-line message; the agent decides when to retry.

Why aetcd and not etcd's JSON gateway (``/v3/...``, also served by Debian 12's etcd 3.4.23):
both work with that etcd (tested), but aetcd gives the real gRPC API (watch streams with a
start revision, lease keep-alive, transactions, compaction errors) as a maintained library,
works on uvloop, and fails fast when a member dies (the stream ends at once with
``ConnectionFailedError``); the gateway would need our own HTTP/1.1 streaming client.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EtcdError", "EtcdClient", "WatchEvent", "parse_endpoints"]

# Dead connections are found by gRPC keepalive pings (etcd's default minimum interval is 5 s).
_GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2_000,
    "grpc.max_receive_message_length": 64 << 20,  # a range read of many leases
}


class EtcdError(Exception):
    """etcd could not be reached or refused a request; the message says which and why."""


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    key: str
    value: bytes
    revision: int  # the revision of this change (mod_revision)


def parse_endpoints(text: str | Sequence[str]) -> list[tuple[str, int]]:
    """``http://198.18.0.201:2379,http://...`` -> [(host, port), ...]; ValueError if wrong.

    Only plain http is supported (no TLS client certificates)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        url = urllib.parse.urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme != "http":
            raise ValueError(f"etcd endpoint {item!r}: only http:// is supported")
        try:
            port = url.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {item!r}: bad port") from None
        if not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"etcd endpoint {item!r} is not http://HOST:PORT")
        out.append((url.hostname, port))
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


def _aetcd() -> Any:
    try:
        import aetcd
    except ImportError:
        raise EtcdError(
            "the flannel agent needs the aetcd package: pip install 'vxlanpy[flannel]'"
        ) from None
    return aetcd


class EtcdClient:
    """One connection at a time to one of ``endpoints``; ``failover()`` moves to the next."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float = 3.0) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._index = 0
        self._client: Any = None
        self._mod = _aetcd()

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._index]
        return f"http://{host}:{port}"

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._mod.ClientError, asyncio.TimeoutError, OSError)

    async def _connected(self) -> Any:
        if self._client is None:
            host, port = self.endpoints[self._index]
            client = self._mod.Client(
                host=host, port=port, timeout=self.timeout, options=_GRPC_OPTIONS
            )
            try:
                await asyncio.wait_for(client.connect(), self.timeout)
            except self._errors() as exc:
                await _close(client)
                raise EtcdError(f"etcd {self.endpoint}: {_reason(exc)}") from None
            self._client = client
        return self._client

    async def failover(self) -> None:
        """Drop the current connection; the next call goes to the next endpoint."""
        await self.close()
        self._index = (self._index + 1) % len(self.endpoints)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close(client)

    async def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        client = await self._connected()
        try:
            return await asyncio.wait_for(getattr(client, name)(*args, **kw), self.timeout + 1)
        except self._errors() as exc:
            raise EtcdError(f"etcd {self.endpoint}: {name}: {_reason(exc)}") from None
        except asyncio.CancelledError:
            _reraise_if_cancelled()
            raise EtcdError(f"etcd {self.endpoint}: {name}: connection closed") from None

    async def connect_any(self, deadline: float) -> str:
        """Find a member that answers, trying each in turn until ``deadline`` (loop time).
        Returns its endpoint; EtcdError naming every endpoint tried if none did."""
        loop = asyncio.get_running_loop()
        last = ""
        while True:
            for _ in self.endpoints:
                try:
                    await self._call("get", b"/")
                    return self.endpoint
                except EtcdError as exc:
                    last = str(exc)
                    await self.failover()
            if loop.time() >= deadline:
                tried = ", ".join(f"http://{h}:{p}" for h, p in self.endpoints)
                raise EtcdError(f"cannot reach etcd at {tried} (last error: {last})")
            await asyncio.sleep(0.5)

    async def get(self, key: str) -> bytes | None:
        r = await self._call("get", key.encode())
        return None if r is None else bytes(r.value)

    async def get_prefix(self, prefix: str) -> tuple[list[tuple[str, bytes]], int]:
        """Every key under ``prefix`` with its value, and the revision of the read."""
        r = await self._call("get_prefix", prefix.encode())
        kvs = [(bytes(kv.key).decode("utf-8", "replace"), bytes(kv.value)) for kv in r.kvs]
        return kvs, int(r.header.revision)

    async def grant(self, ttl: int) -> int:
        lease = await self._call("lease", ttl)
        return int(lease.id)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease; its new TTL in seconds (0 or less: it has expired)."""
        reply = await self._call("refresh_lease", lease_id)
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self._call("revoke_lease", lease_id)

    async def create(self, key: str, value: str, lease_id: int) -> bool:
        """Put ``key`` bound to the lease only if it does not exist (version 0): True if
        created, False if someone holds it."""
        client = await self._connected()
        tx = client.transactions
        k = key.encode()
        ok, _ = await self._call(
            "transaction",
            compare=[tx.version(k) == 0],
            success=[tx.put(k, value.encode(), lease=lease_id)],
            failure=[],
        )
        return bool(ok)

    async def put(self, key: str, value: str | bytes, lease_id: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        await self._call("put", key.encode(), data, lease=lease_id or None)

    async def delete(self, key: str) -> None:
        await self._call("delete", key.encode())

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` from ``start_revision`` on, as they happen. Ends with
        EtcdError when the stream breaks (member gone, compacted revision, ...)."""
        client = await self._connected()
        try:
            watch = await client.watch_prefix(prefix.encode(), start_revision=start_revision)
        except self._errors() as exc:
            raise EtcdError(f"etcd {self.endpoint}: watch: {_reason(exc)}") from None
        put = self._mod.EventKind.PUT
        try:
            async for ev in watch:
                kv = ev.kv
                yield WatchEvent(
                    "put" if ev.kind == put else "delete",
                    bytes(kv.key).decode("utf-8", "replace"),
                    bytes(kv.value),
                    int(kv.mod_revision),
                )
        except self._errors() as exc:
            raise EtcdError(f"etcd {self.endpoint}: watch: {_reason(exc)}") from None
        except asyncio.CancelledError:
            _reraise_if_cancelled()
            raise EtcdError(f"etcd {self.endpoint}: watch: connection closed") from None
        finally:
            try:
                await asyncio.wait_for(watch.cancel(), 1.0)
            except Exception:
                pass


def _reraise_if_cancelled() -> None:
    """Re-raise a CancelledError meant for this task; return if gRPC raised it because the
    channel was closed under the call (another task's failover)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


async def _close(client: Any) -> None:
    try:
        await asyncio.wait_for(client.close(), 2.0)
    except Exception:
        pass
