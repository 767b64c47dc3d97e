"""One writer per remote directory: a lease object that works on any
object store (no rename, no exclusive create).

The writer writes `.lease` (its id, host, pid and an expiry time) and reads
it back after a short settle time: two writers that raced both see the one
written last, and only its owner goes on. It renews the lease while it
writes (every third of `ttl`) and checks it before each publish and
deletion, so a writer that lost it never publishes. A lease that expired is
free; so is one of a process on this host that is gone (a rerun after
kill -9 needs no wait). A live lease of another host is waited out once (a
new VM starts while its predecessor's lease runs out) and taken only if it
was not renewed meanwhile.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from tfckpt.errors import DirectoryLockedError
from tfckpt.remote.bucket import Bucket

LEASE = ".lease"
TTL = 60.0  # seconds a lease lasts without renewal
SETTLE = 0.5  # seconds between writing a lease and reading it back
_LIMIT = 4096


class LeaseLost(DirectoryLockedError):
    """Another writer holds the remote directory's lease now."""


class Lease:
    """The writer's lease of `bucket`'s directory."""

    def __init__(self, bucket: Bucket, *, ttl: float = TTL, settle: float = SETTLE):
        self.bucket = bucket
        self.ttl = ttl
        self.settle = settle
        self.owner = uuid.uuid4().hex
        self.held = False
        self._renewed = 0.0

    def _mine(self) -> dict[str, Any]:
        now = time.time()
        return {
            "owner": self.owner,
            "host": _machine(),
            "pid": os.getpid(),
            "renewed": now,
            "expires": now + self.ttl,
        }

    def read(self) -> dict[str, Any] | None:
        """The lease as stored, `None` when there is none (or it is not one
        tfckpt wrote: a garbled lease holds nothing)."""
        try:
            data = self.bucket.read(LEASE, limit=_LIMIT)
            lease = json.loads(data) if data is not None else None
        except ValueError:
            return None
        if not isinstance(lease, dict) or not isinstance(lease.get("owner"), str):
            return None
        for key in ("renewed", "expires"):
            if not isinstance(lease.get(key), (int, float)):
                return None
        return lease

    def _free(self, lease: dict[str, Any] | None) -> bool:
        if lease is None or lease["owner"] == self.owner or lease["expires"] < time.time():
            return True
        if lease.get("host") == _machine() and isinstance(lease.get("pid"), int):
            return not _alive(lease["pid"])
        return False

    def take(self, *, wait: bool = True, say: Callable[[str], None] | None = None) -> None:
        """Takes the lease, or raises `DirectoryLockedError` naming its holder."""
        lease = self.read()
        here = lease is not None and lease.get("host") == _machine()
        # A holder on this host is alive (checked): only another host's is waited out.
        if not self._free(lease) and wait and not here:
            remaining = min(lease["expires"] - time.time(), self.ttl) + 1.0
            if say is not None:
                say(
                    f"the lease of {self.bucket.url} is held by {_holder(lease)}; waiting "
                    f"{remaining:.0f} s for it to run out"
                )
            time.sleep(max(0.0, remaining))
            again = self.read()
            if again is not None and again["renewed"] == lease["renewed"]:
                lease = None  # ran out unrenewed: its writer is gone
            else:
                lease = again
        if not self._free(lease):
            raise DirectoryLockedError(
                f"{self.bucket.url!r} has an active writer ({_holder(lease)}, lease renewed "
                f"{time.time() - lease['renewed']:.0f} s ago). One writer per remote "
                "directory: stop the other one, or mirror to another directory."
            )
        self._write()
        time.sleep(self.settle)
        now = self.read()
        if now is None or now["owner"] != self.owner:
            self.held = False
            raise DirectoryLockedError(
                f"Another writer took {self.bucket.url!r} at the same moment "
                f"({_holder(now) if now else 'unknown'}). One writer per remote directory."
            )
        self.held = True

    def _write(self) -> None:
        self.bucket.write(LEASE, data=json.dumps(self._mine()).encode())
        self._renewed = time.monotonic()

    def check(self) -> None:
        """Raises `LeaseLost` unless this writer still holds the lease; renews
        it when a third of its time has passed."""
        lease = self.read()
        if lease is None or lease["owner"] != self.owner:
            self.held = False
            raise LeaseLost(
                f"The lease of {self.bucket.url!r} was taken by "
                f"{_holder(lease) if lease else 'nobody (it was removed)'}: this process "
                "no longer writes there."
            )
        if time.monotonic() - self._renewed > self.ttl / 3:
            self._write()

    def renew(self) -> None:
        if self.held and time.monotonic() - self._renewed > self.ttl / 3:
            self.check()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            lease = self.read()
            if lease is not None and lease["owner"] == self.owner:
                self.bucket.remove(LEASE)
        except Exception:
            pass  # it runs out by itself


def _machine() -> str:
    """This machine and process namespace: the host name, and where Linux
    says, the boot id and the pid namespace, so that two containers or VMs
    that share a host name are never taken for one (a pid is only checked
    on the machine and namespace that wrote it)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip()[:36])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)


def _holder(lease: dict[str, Any] | None) -> str:
    if not lease:
        return "unknown"
    host = str(lease.get("host")).split("/")[0]  # the name, without boot and namespace ids
    return f"pid {lease.get('pid')!r} on host {host!r}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True
