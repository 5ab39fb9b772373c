"""Runtime control of a running VTEP over a Unix socket: fdb, neigh, stats, events, config,
trace.

Protocol: one JSON object per line each way. A request names ``cmd`` (``fdb``, ``neigh``,
``stats``, ``events``, ``config``, ``trace``), an ``op`` where it has several, and its
arguments; the answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
``events`` answers ``{"ok": true}`` and then streams one event object per line until the client
leaves; ``trace`` ``live`` streams records likewise, bounded (trace_live.py).
The socket is created mode 0600 in a 0700 directory: root only.

The server holds up against any client: every line is answered (a malformed one with an
error, and the connection goes on), or the connection is closed after a line saying why
(too many clients or subscribers, idle, a line over 64 KiB, answers not read); an event
subscriber that closes is noticed at once; no exception escapes a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from . import trace_live
from .events import Event
from .fdb import FdbError
from .neigh import NeighExists, NeighNotFound
from .serving import TaskServer
from .tunnel import Vtep, VtepError
from .wire import format_mac

__all__ = [
    "ControlServer",
    "ControlError",
    "RequestError",
    "parse_request",
    "DEFAULT_DIR",
    "default_dir",
    "default_path",
    "find_socket",
    "request",
    "stream",
]

log = logging.getLogger("vxlanpy")

DEFAULT_DIR = "/run/vxlanpy"
_MAX_LINE = 1 << 16


class ControlError(Exception):
    """The control socket could not be reached, or the VTEP refused the request."""


def default_dir() -> str:
    """Where sockets go by default: one directory per network namespace, so VTEPs in different
    namespaces (which share the filesystem) never collide. In a named namespace (``ip netns``)
    it is ``/run/vxlanpy/netns-<name>``; elsewhere ``/run/vxlanpy``."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        names = sorted(os.listdir("/run/netns"))
    except OSError:
        return DEFAULT_DIR
    for name in names:
        try:
            ino = os.stat(os.path.join("/run/netns", name)).st_ino
        except OSError:  # another namespace deleted meanwhile: not this one
            continue
        if ino == mine:
            return os.path.join(DEFAULT_DIR, f"netns-{name}")
    return DEFAULT_DIR


def default_path(tap: str) -> str:
    return os.path.join(default_dir(), f"{tap}.sock")


class RequestError(ValueError):
    """A request line that is not a JSON object (the message is the answer's ``error``)."""


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line -> the request object; RequestError (with the answer to give) for
    anything else: not JSON, nested too deeply for the parser, not an object."""
    try:
        req = json.loads(line)
    except RecursionError:
        raise RequestError("malformed request: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise RequestError(f"malformed request: {exc}") from None
    if not isinstance(req, dict):
        raise RequestError("malformed request: a request is a JSON object")
    return req


class ControlServer(TaskServer):
    """Serves the control protocol for ``vtep`` on ``path``.

    Every request line gets an answer, or the connection is closed after a line saying why:
    more than ``max_clients`` connections or ``max_subscribers`` event streams at once, no
    complete request within ``idle_timeout`` seconds, a line over 64 KiB, a client that does
    not read its answers within ``write_timeout`` seconds. An event subscriber that closes is
    noticed at once (its connection is read while events are streamed)."""

    def __init__(
        self,
        vtep: Vtep,
        path: str,
        *,
        max_clients: int = 256,
        max_subscribers: int = 32,
        idle_timeout: float = 60.0,
        write_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.vtep = vtep
        self.path = path
        self.max_clients = max_clients
        self.max_subscribers = max_subscribers
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.refused = Counter[str]()  # connections closed early, by reason
        self._subscribers = 0
        self._dir_fd: int | None = None

    async def start(self) -> None:
        """Bind the socket; ControlError if another VTEP is serving on it."""
        d = os.path.dirname(self.path) or "."
        os.makedirs(d, mode=0o700, exist_ok=True)
        if os.stat(d).st_mode & 0o007 and d.startswith(DEFAULT_DIR):
            os.chmod(d, 0o700)  # (group bits: a VTEP run with --user USER:GROUP uses them)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale socket of a VTEP that is gone
            else:
                raise ControlError(
                    f"control socket {self.path} is in use by another VTEP (give --control PATH)"
                )
            finally:
                probe.close()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, self.path, limit=_MAX_LINE, backlog=self.max_clients
            )
        except OSError as exc:
            raise ControlError(f"cannot create control socket {self.path}: {exc}") from exc
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    def hand_over(self, uid: int, gid: int) -> None:
        """Before the process switches to ``uid``/``gid``: make the socket theirs, and its
        directory writable by ``gid`` with the sticky bit (members may remove only what they
        own), so the switched process can still remove the socket on exit. It does so through a
        directory fd opened now: the directories above (``/run/vxlanpy`` is 0700) stay closed
        to that user. Root's clients connect as before (root is not bound by the file mode)."""
        d = os.path.dirname(os.path.abspath(self.path))
        self._dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chown(self.path, uid, gid)
        st = os.fstat(self._dir_fd)
        if st.st_uid != uid:
            os.fchown(self._dir_fd, -1, gid)
            os.fchmod(self._dir_fd, (st.st_mode & 0o7777) | 0o1030)

    async def close(self) -> None:
        if self._stop_serving():
            with contextlib.suppress(OSError):
                if self._dir_fd is None:
                    os.unlink(self.path)
                else:
                    os.unlink(os.path.basename(self.path), dir_fd=self._dir_fd)
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None
            d = os.path.dirname(self.path)
            if os.path.basename(d).startswith("netns-"):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only when empty

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return len(self._clients)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if len(self._clients) >= self.max_clients:
                await self._refuse(writer, "clients", f"too many clients ({self.max_clients})")
                return
            if task is not None:
                self._clients.add(task)
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # the client left, stalled, or the server is closing
        except Exception as exc:  # never let one connection take the VTEP down
            log.error("control socket: %s: %s", type(exc).__name__, exc)
        finally:
            if task is not None:
                self._clients.discard(task)
            _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
            except TimeoutError:
                await self._refuse(writer, "idle", f"idle for {self.idle_timeout:g} s")
                return
            except (ValueError, asyncio.LimitOverrunError):
                await self._refuse(writer, "too-long", f"request line over {_MAX_LINE} bytes")
                return
            if not line:
                return
            try:
                req = parse_request(line)
            except RequestError as exc:
                await self._send(writer, {"ok": False, "error": str(exc)})
                continue
            if req.get("cmd") == "events":
                await self._events(reader, writer)
                return
            if req.get("cmd") == "trace" and req.get("op") == "live":
                if not await self._trace(reader, writer, req):
                    return  # the client left, or was refused
                continue
            await self._send(writer, self.handle(req))

    async def _refuse(self, writer: asyncio.StreamWriter, kind: str, why: str) -> None:
        """Say why the connection is being closed (the caller closes it)."""
        self.refused[kind] += 1
        await self._send(writer, {"ok": False, "error": f"{why}: closing the connection"})

    async def _send(self, writer: asyncio.StreamWriter, obj: object) -> None:
        writer.write(json.dumps(obj, default=str).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), self.write_timeout)

    async def _events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._subscribers >= self.max_subscribers:
            why = f"too many event subscribers ({self.max_subscribers})"
            await self._refuse(writer, "subscribers", why)
            return
        self._subscribers += 1
        stream = self.vtep.events()
        gone = asyncio.ensure_future(_until_eof(reader))
        nxt: asyncio.Future[Event] | None = None
        try:
            await self._send(writer, {"ok": True})
            while True:
                nxt = asyncio.ensure_future(anext(stream))
                await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():  # the client closed: stop streaming now
                    return
                try:
                    ev = nxt.result()
                except StopAsyncIteration:
                    return  # the VTEP stopped
                await self._send(writer, ev.to_dict())
        finally:
            self._subscribers -= 1
            gone.cancel()
            if nxt is not None and not nxt.done():  # the stream must be idle to be closed
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
            await stream.aclose()

    async def _trace(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: dict[str, Any]
    ) -> bool:
        """``trace`` ``live``: records as they happen (trace_live.py), then a last line
        ``{"end": true, "records": N, "lost": N}``; bounded by count and timeout. False if
        the connection is done (the client left, or too many subscribers)."""
        try:
            flt, count, timeout, with_bytes = trace_live.live_filter(req)
        except ValueError as exc:
            await self._send(writer, {"ok": False, "error": str(exc)})
            return True
        if self._subscribers >= self.max_subscribers:
            why = f"too many event subscribers ({self.max_subscribers})"
            await self._refuse(writer, "subscribers", why)
            return False
        self._subscribers += 1
        ts = trace_live.TraceStream(self.vtep, flt)
        gone = asyncio.ensure_future(_until_eof(reader))
        try:
            await self._send(writer, {"ok": True})
            async for rec in ts.records(count, timeout, gone):
                if gone.done():
                    return False
                await self._send(writer, rec.to_dict(with_bytes))
            await self._send(writer, {"end": True, "records": ts.sent, "lost": ts.lost})
            return not gone.done()
        finally:
            ts.close()
            self._subscribers -= 1
            gone.cancel()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Answer one request (everything but ``events``); never raises."""
        try:
            return {"ok": True, "result": self._dispatch(req)}
        except (VtepError, FdbError, NeighExists, NeighNotFound, ValueError, KeyError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return {"ok": False, "error": str(msg)}
        except (TypeError, AttributeError) as exc:
            return {"ok": False, "error": f"bad argument: {exc}"}
        except Exception as exc:  # a bug: answer, log one line, keep serving
            log.error("control request %.200r: %s: %s", req, type(exc).__name__, exc)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def _dispatch(self, req: dict[str, Any]) -> Any:
        cmd = req.get("cmd")
        op = req.get("op", "show")
        v = self.vtep
        if cmd == "stats":
            return v.stats()
        if cmd == "config":
            return config_dict(v)
        if cmd == "trace":  # what would happen (the live trace streams: _trace)
            return trace_live.simulate_request(v, req)
        if cmd not in ("fdb", "neigh"):
            raise ValueError(f"unknown command {cmd!r}")
        if not isinstance(op, str):
            raise ValueError(f"'op' must be a string, got {op!r}")
        vnis = self._vnis(req.get("vni"))
        if op != "show" and len(vnis) > 1:
            raise ValueError(f"several VNIs are configured ({', '.join(map(str, vnis))}): give vni")
        if cmd == "fdb":
            if op == "show":
                return [row for vni in vnis for row in fdb_rows(v, vni)]
            v.fdb_update(
                op,
                vnis[0],
                _str(req, "mac"),
                _opt_str(req, "dst"),
                port=_opt_int(req, "port"),
                remote_vni=_opt_int(req, "remote_vni"),
            )
            return None
        if op == "show":
            return [row for vni in vnis for row in neigh_rows(v, vni)]
        v.neigh_update(op, vnis[0], _str(req, "ip"), _opt_str(req, "lladdr"))
        return None

    def _vnis(self, vni: object) -> list[int]:
        segs = sorted(self.vtep.engine.segments)
        if vni is None:
            return segs
        if not isinstance(vni, int) or isinstance(vni, bool) or vni not in segs:
            raise ValueError(f"VNI {vni!r} is not configured (have {', '.join(map(str, segs))})")
        return [vni]


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Read (and ignore) what a subscriber sends until it closes its end."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


def _close(writer: asyncio.StreamWriter) -> None:
    """Close now: a client that does not read leaves unsent answers, which are dropped."""
    t = writer.transport
    if t.get_write_buffer_size():
        t.abort()
    else:
        writer.close()


def _str(req: dict[str, Any], key: str) -> str:
    v = req.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{key!r} is required")
    return v


def _opt_str(req: dict[str, Any], key: str) -> str | None:
    v = req.get(key)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{key!r} must be a string")
    return v


def _opt_int(req: dict[str, Any], key: str) -> int | None:
    v = req.get(key)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
        raise ValueError(f"{key!r} must be an integer")
    return v


def fdb_rows(vtep: Vtep, vni: int) -> list[dict[str, Any]]:
    tap = vtep.taps[vni].name if vni in vtep.taps else f"vni{vni}"
    rows = []
    for e in vtep.fdb_entries(vni):
        for r in e.remotes:
            rows.append(
                {
                    "mac": format_mac(e.mac),
                    "dev": tap,
                    "dst": r.ip,
                    "port": r.port,
                    "vni": r.vni if r.vni is not None else vni,
                    "permanent": e.permanent,
                    "age": None if e.age is None else round(e.age, 1),
                }
            )
    return rows


def neigh_rows(vtep: Vtep, vni: int) -> list[dict[str, Any]]:
    tap = vtep.taps[vni].name if vni in vtep.taps else f"vni{vni}"
    return [
        {"ip": ip, "dev": tap, "lladdr": format_mac(mac), "vni": vni, "state": "PERMANENT"}
        for ip, mac in vtep.neigh_entries(vni)
    ]


def config_dict(vtep: Vtep) -> dict[str, Any]:
    """The running configuration with the live static FDB and neighbour entries."""
    cfg = dataclasses.asdict(vtep.config)
    for seg in cfg["segments"]:
        s = vtep.engine.segment(seg["vni"])
        tap = vtep.taps.get(seg["vni"])
        if tap is not None:
            seg["tap"] = tap.name
            seg["mtu"] = tap.mtu
            seg["mac"] = format_mac(tap.mac)
        seg["remotes"] = []
        seg["fdb"] = [
            (format_mac(mac), r.ip, r.port, r.vni) for mac, rs in s.fdb.static_items() for r in rs
        ]
        seg["neigh"] = [(ip, format_mac(mac)) for ip, mac in s.neigh.entries()]
        seg["learning"] = s.fdb.learning
    return cfg


# --- client side -------------------------------------------------------------------------------


def find_socket(path: str | None) -> str:
    """``path``, or the only socket in the default directory; ControlError otherwise."""
    if path:
        return path
    where = default_dir()
    found = sorted(glob.glob(os.path.join(where, "*.sock")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ControlError(f"no running VTEP found in {where} (give --control PATH)")
    raise ControlError(f"several VTEPs are running ({', '.join(found)}): give --control PATH")


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as exc:
        s.close()
        raise ControlError(f"cannot reach the VTEP at {path}: {exc.strerror or exc}") from None
    return s


def request(path: str, req: dict[str, Any], timeout: float = 5.0) -> Any:
    """Send one request; return its result or raise ControlError with the VTEP's message."""
    with _connect(path, timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        f = s.makefile("rb")
        line = f.readline()
        f.close()
    if not line:
        raise ControlError("the VTEP closed the connection without answering")
    resp = json.loads(line)
    if not resp.get("ok"):
        raise ControlError(str(resp.get("error", "request refused")))
    return resp.get("result")


def stream(
    path: str,
    req: dict[str, Any],
    timeout: float | None = None,
    ready: Callable[[], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Send a streaming request (``events``, ``trace``) and yield each object that comes
    back (``timeout``: at most that long between two lines; ``ready`` is called once the
    VTEP has accepted the request)."""
    with _connect(path, 5.0) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        s.settimeout(timeout)
        f = s.makefile("rb")
        try:
            first = f.readline()
            if not first or not json.loads(first).get("ok"):
                resp = json.loads(first) if first else {}
                why = resp.get("error") if isinstance(resp, dict) else None
                why = why or first.decode(errors="replace").strip() or "closed"
                raise ControlError(f"{req.get('cmd')} refused: {why}")
            if ready is not None:
                ready()
            for line in f:
                yield json.loads(line)
        finally:
            f.close()
