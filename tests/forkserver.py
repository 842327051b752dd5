"""A fork server for the docs examples (tests/test_docs.py): imgcls's modules imported once, each
example command run in a fork of that process.

Every `imgcls ...` in a docs example would otherwise pay 5-15 s of imports (torch, timm,
scikit-learn, matplotlib) on a busy 2-core machine, and the docs hold dozens of them. Here one
server process imports every imgcls module, then for each request forks a child that takes the
caller's stdin, stdout and stderr (passed over a Unix socket), working folder, environment and
arguments, runs `imgcls.cli.main(argv)` (what the `imgcls` console script runs) or a Python
example as `__main__`, and exits with its status, which the server sends back. Commands run one
at a time.

    python tests/forkserver.py serve SOCKET             # the server: prints "ready" once imported
    python -S tests/forkserver.py imgcls SOCKET ARGS    # a client: behaves as `imgcls ARGS` would
    python -S tests/forkserver.py python SOCKET SCRIPT  # a client: behaves as `python SCRIPT` would

`imgcls serve` never runs in a fork (it runs until stopped, and the server runs one command at a
time): its client execs the real command line instead.
"""

from __future__ import annotations

import json
import os
import socket
import sys

MAX_MESSAGE = 1 << 22
STD_FDS = [0, 1, 2]
REAL_PROCESS = {"serve"}       # commands that the client runs as a real process


# -- the client -----------------------------------------------------------------------------
def request(path: str, message: dict, fds: list[int]) -> int:
    """Send one request with the fds that become the child's stdin, stdout and stderr; its exit status."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(path)
        socket.send_fds(sock, [json.dumps(message).encode()], fds)
        reply = sock.recv(4096)
    if not reply:
        return 1
    return json.loads(reply)["status"]


def client(kind: str, path: str, argv: list[str]) -> int:
    here = {"cwd": os.getcwd(), "env": dict(os.environ)}
    if kind == "python":
        script = os.path.abspath(argv[0])
        with open(script) as file:
            return request(path, {"kind": "python", "name": script, "code": file.read(), **here}, STD_FDS)
    if argv and argv[0] in REAL_PROCESS:
        os.execv(sys.executable, [sys.executable, "-m", "imgcls.cli", *argv])
    return request(path, {"kind": "imgcls", "argv": argv, **here}, STD_FDS)


# -- the server -----------------------------------------------------------------------------
def preload() -> None:
    """Import every imgcls module (and so torch, timm, scikit-learn, ...), without running anything:
    a forked child must not inherit thread pools that computing would have started."""
    import importlib
    import pkgutil

    import matplotlib
    matplotlib.use("Agg")
    import imgcls
    for module in pkgutil.walk_packages(imgcls.__path__, "imgcls."):
        importlib.import_module(module.name)


def run_child(message: dict, fds: list[int]) -> int:
    """In the forked child: become the process the request describes, run it, return its status."""
    for target, fd in zip(STD_FDS, fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    os.chdir(message["cwd"])
    os.environ.clear()
    os.environ.update(message["env"])
    try:
        if message["kind"] == "imgcls":
            from imgcls.cli import main
            sys.argv = ["imgcls", *message["argv"]]
            return main(message["argv"]) or 0
        sys.argv = [message["name"]]
        sys.path[0] = os.path.dirname(message["name"])      # as for `python SCRIPT`
        exec(compile(message["code"], message["name"], "exec"), {"__name__": "__main__"})
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        return 1


def serve(path: str) -> None:
    preload()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.bind(path)
        sock.listen(8)
        sock.settimeout(5)
        parent = os.getppid()
        print("ready", flush=True)
        while True:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                if os.getppid() != parent:         # the test that started it is gone
                    return
                continue
            conn.settimeout(None)
            with conn:
                data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, len(STD_FDS))
                message = json.loads(data)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    conn.close()
                    status = run_child(message, fds)
                    import atexit
                    atexit._run_exitfuncs()        # what a real process would run at exit
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(status if 0 <= status < 256 else 1)
                for fd in fds:
                    os.close(fd)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                conn.send(json.dumps({"status": code if code >= 0 else 128 - code}).encode())


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(client(sys.argv[1], sys.argv[2], sys.argv[3:]))
