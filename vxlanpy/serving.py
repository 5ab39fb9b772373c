"""What the control socket (control.py) and the metrics endpoint (metrics.py) share: an asyncio
server whose connections are served by tasks, all cancelled when it stops."""

from __future__ import annotations

import asyncio

__all__ = ["TaskServer"]


class TaskServer:
    """The asyncio server (``_server``, once started) and the tasks serving its connections
    (``_clients``: a connection's task adds itself and discards itself when done)."""

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def _stop_serving(self) -> bool:
        """Stop accepting and cancel every connection's task; False if it was not serving."""
        if self._server is None:
            return False
        self._server.close()
        for t in list(self._clients):
            t.cancel()
        self._server = None
        return True
