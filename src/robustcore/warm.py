"""Warm workers for local runs: a job's process hands its command to a server that has imported
torch and the package once, and forks a child per job.

A job of the default run spends a few seconds of work against about three seconds of Python
start-up and imports (torch alone is 2.3 CPU-seconds); a fork of a process that has them costs
milliseconds. The workflow starts the server for local runs (`warm_workers` in the config) and
points jobs at it with ROBUSTCORE_WARM; `python -m robustcore` then sends its arguments, working
folder, environment and its stdin/stdout/stderr to the server and waits for the child's exit
status, forwarding SIGTERM, SIGINT, SIGHUP and SIGUSR1 to it (checkpointing jobs still save and
exit 75 on SIGUSR1). With no server, or one that cannot be reached, the job runs in its own
process as before. The child runs exactly `robustcore.cli.main`, so its outputs are those of a
fresh process (every job seeds every generator itself).

The client side imports only the standard library. The server imports everything at start, while
it has started no thread of its own, and forks before any torch computation, so no thread pool
is copied in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import traceback
from pathlib import Path

ENV = "ROBUSTCORE_WARM"  # the server's socket path
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
_LENGTH = struct.Struct("!I")
_STATUS = struct.Struct("!q")


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    """`size` bytes from the connection, or None if it closes first."""
    chunks, left = [], size
    while left:
        try:
            chunk = conn.recv(left)
        except InterruptedError:
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_status(conn: socket.socket) -> int | None:
    """One signed 64-bit integer from the connection, or None if it closed."""
    data = _read_exact(conn, _STATUS.size)
    return None if data is None else _STATUS.unpack(data)[0]


def delegate(argv: list[str]) -> int | None:
    """Run `robustcore argv` in the warm server; its exit status, or None if there is none."""
    path = os.environ.get(ENV)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None  # no server (any more): the caller runs the command itself
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [_LENGTH.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    pid = _read_status(conn)
    if pid is None:
        print("robustcore: the warm server closed the connection", file=sys.stderr)
        return 1

    def forward(number: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # the worker has just ended
            os.kill(pid, number)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    status = _read_status(conn)
    if status is None:
        print(f"robustcore: warm worker {pid} ended without a status", file=sys.stderr)
        return 1
    return int(status)


def _run_child(conn: socket.socket) -> None:
    """In the forked child: take over the job's streams, folder and environment; run it; exit."""
    code = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        header, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 3)
        request = json.loads(_read_exact(conn, _LENGTH.unpack(header)[0]))
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["robustcore", *request["argv"]]
        conn.sendall(_STATUS.pack(os.getpid()))
        from robustcore.cli import main  # already imported by the server: a dictionary lookup

        code = main(request["argv"])
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 (anything the job raised ends it with status 1)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            conn.sendall(_STATUS.pack(code))
        finally:
            os._exit(code)


def serve(path: str) -> None:
    """Import everything the jobs run, then fork a child per connection until the parent dies."""
    import importlib

    from robustcore import codegraph

    for name in codegraph.modules():
        if not name.endswith(("__main__", ".warm")):
            importlib.import_module(name)
    # torch.optim's first step imports torch._dynamo (with sympy and inductor: ~870 modules, about
    # a second per training job); importing it here starts no thread.
    import torch._dynamo  # noqa: F401

    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the jobs, not the server
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    os.replace(staging, path)  # the socket appears only once the server is ready
    listener.listen(64)
    listener.settimeout(1.0)
    print(f"robustcore warm server {os.getpid()} ready on {path}", flush=True)
    while os.getppid() == parent:  # the workflow that started us is still running
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        sys.stdout.flush()
        if os.fork() == 0:
            listener.close()
            conn.settimeout(None)
            _run_child(conn)
        conn.close()
    Path(path).unlink(missing_ok=True)


if __name__ == "__main__":
    serve(sys.argv[1])
