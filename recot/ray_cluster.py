"""A connection to a Ray cluster for the steps that run as Ray tasks (synthesis shards, curation shards).

The cluster is the one at the given address, ``RAY_ADDRESS``, or a local one started for the call; a
connection the call made is closed by it, so Ray's own messages end there. An address nothing answers at
is one named error at once (Ray itself retries for minutes, printing a warning every few seconds).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from recot.errors import DataError

FIX = "start it (ray start --head) or check --ray-address / RAY_ADDRESS; leave both unset for a local cluster"


@contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """The ``ray`` module, connected to the cluster at ``address`` (or ``RAY_ADDRESS``, or a local one)."""
    try:
        import ray
    except ImportError:
        raise DataError("ray", "Ray is not installed", "pip install 'recot[ray]'") from None
    owned = not ray.is_initialized()
    if owned:
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DataError(address or os.environ.get("RAY_ADDRESS", "ray"), f"cannot connect to the Ray cluster ({_first_line(exc)})",
                            FIX) from None
    try:
        yield ray
    finally:
        if owned:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """``auto``, ``local`` or no address start or find a cluster on this machine; any other must answer."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise DataError(address, f"cannot connect to the Ray cluster ({exc})", FIX) from None
