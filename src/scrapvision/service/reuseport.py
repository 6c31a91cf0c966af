"""One listening socket per worker process (SO_REUSEPORT), so the kernel spreads the streams.

uvicorn's `workers=N` binds one socket in the parent and every worker accepts on it: the worker
that wakes first accepts the whole burst waiting in the backlog, and a camera stream keeps its
connection, so at 16 streams 15 sat on one of two workers (bench/RESULTS.md). With one
SO_REUSEPORT socket per worker on the same address, Linux picks the listener of each new
connection by a hash of its addresses, which spreads them evenly over the workers.

uvicorn's own supervisor (`Multiprocess`: restart on crash, SIGINT/SIGTERM, SIGHUP/TTIN/TTOU) runs
the workers as it is; this module only gives it a socket list that each worker binds for itself.
Each socket listens from the moment it is bound, while its worker still loads its models: the
kernel spreads only over listening sockets, so otherwise every camera connecting while a
worker starts up would land, and stay, on the workers already up (bench: 16 of 16).
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable

from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("scrapvision.service")


def balances() -> bool:
    """Whether the kernel spreads connections over SO_REUSEPORT listeners: Linux (3.9+) does.

    macOS and the BSDs accept the option but give every connection to one of the sockets,
    worse than one shared socket; Windows has no such option.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def check_free(host: str, port: int) -> int:
    """Bind `host:port` once without SO_REUSEPORT and release it; the port (0 resolved).

    Raises OSError (EADDRINUSE) when another process holds the port. Needed because the worker
    sockets set SO_REUSEPORT, and that lets them join a port another process of the same user
    listens on with SO_REUSEPORT too (a second `scrapvision serve`): the two services would
    then share the connections instead of the second one failing.
    """
    with _socket(host) as probe:
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def run(config: Config) -> None:
    """Serve `config.workers` workers under uvicorn's `Multiprocess`, each on its own socket.

    `config.port` must be a fixed port (see `check_free`). Exits with uvicorn's STARTUP_FAILURE
    when a worker could not start: `Multiprocess` then stops the others but returns normally.
    """
    log.info("listening on http://%s:%d with %d workers, one SO_REUSEPORT socket each",
             config.host, config.port, config.workers)
    sockets = _BoundInEachWorker(config.host, config.port, config.backlog)
    supervisor = Multiprocess(config, sockets=sockets)
    supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


class _BoundInEachWorker(list[socket.socket]):
    """The socket list `Multiprocess` gives every worker it starts or restarts.

    Empty in the parent, so the parent has no listening socket the kernel would hand
    connections to. uvicorn passes it to each worker by pickling (its workers are
    multiprocessing 'spawn' children), and unpickled it becomes a list with a SO_REUSEPORT
    socket that worker has just bound and listens on; the worker's uvicorn `Server` accepts
    on it once the app has started, and closes it on shutdown.
    """

    def __init__(self, host: str, port: int, backlog: int) -> None:
        super().__init__()
        self.host, self.port, self.backlog = host, port, backlog

    def __reduce__(self) -> tuple[Callable[[str, int, int], list[socket.socket]],
                                  tuple[str, int, int]]:
        return _bind_reuseport, (self.host, self.port, self.backlog)


def _bind_reuseport(host: str, port: int, backlog: int) -> list[socket.socket]:
    """In a starting worker: its own listening socket on `host:port`, joining the others there.

    Connections the kernel hands it wait in its backlog until the worker's app has started.
    Runs while the worker unpickles its arguments, before uvicorn configures logging, hence
    the plain message; STARTUP_FAILURE tells `Multiprocess` not to restart it in a loop.
    """
    sock = _socket(host)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        print(f"cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    return [sock]


def _socket(host: str) -> socket.socket:
    """A TCP socket for `host` with SO_REUSEADDR, as uvicorn's own `Config.bind_socket`."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock
