"""The upgrade journal: every step of a run, written as it happens, so a crashed or interrupted
run resumes where it stopped without redoing finished nodes.

Two homes: a ConfigMap in the cluster (default ``kube-system/kubecare-upgrade``, visible to
every admin and to ``kubecare upgrade status`` from any machine), or a local JSON file. The
ConfigMap is replaced with its resourceVersion: two runs writing one journal get a 409 instead
of overwriting each other; the file is replaced atomically.

A node is ``pending`` → ``draining`` → ``upgrading`` → ``waiting`` → ``uncordoning`` → ``done``
(or ``failed``). Resuming redoes a node that is not ``done`` from its drain: each step is safe
to repeat (a drain of a drained node, ``kubeadm upgrade`` at the version already there, an
uncordon).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from kubecare.errors import TRANSIENT, Conflict, NotFound, OperationFailed, UsageError
from kubecare.files import write_atomic
from kubecare.kube import JSON, Kube

DEFAULT_NAME = "kubecare-upgrade"
DEFAULT_NAMESPACE = "kube-system"
KEY = "journal.json"
FORMAT = 1

PENDING, DRAINING, UPGRADING, WAITING, UNCORDONING, DONE, FAILED = (
    "pending",
    "draining",
    "upgrading",
    "waiting",
    "uncordoning",
    "done",
    "failed",
)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class NodeRecord:
    name: str
    role: str
    batch: int
    state: str = PENDING
    started: str = ""
    finished: str = ""
    error: str = ""
    attempts: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    replaced_by: str = ""  # surge: the new node that took its place
    cordoned: bool = False  # cordoned before the upgrade: left cordoned after it


@dataclass
class Journal:
    target: str
    started: str
    executor: str
    strategy: str
    max_unavailable: int
    nodes: list[NodeRecord]
    state: str = "running"  # running | paused | failed | done
    owner: str = ""
    updated: str = ""
    snapshot: str = ""  # where the etcd snapshot of this run is
    backup: str = ""  # where the resource backup of this run is
    message: str = ""
    # Workloads not fully available when the run began: the health gate's baseline, kept so a
    # resumed run judges against the same start.
    baseline: list[str] | None = None  # None: not taken yet
    gate_pending: int = -1  # a batch whose health gate has not passed yet (-1: none)
    format: int = FORMAT

    def node(self, name: str) -> NodeRecord:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def done(self) -> list[str]:
        return [n.name for n in self.nodes if n.state == DONE]

    def to_json(self) -> bytes:
        import dataclasses

        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes | str, where: str) -> Journal:
        try:
            raw = orjson.loads(data)
            if raw.get("format", 0) > FORMAT:
                raise UsageError(
                    f"the upgrade journal {where} was written by a newer kubecare "
                    f"(format {raw['format']}); use that version"
                )
            if not isinstance(raw.get("nodes"), list):
                raise TypeError("nodes")
            for n in raw["nodes"]:
                _check_types(NodeRecord, n)
            _check_types(cls, {k: v for k, v in raw.items() if k != "nodes"})
            raw["nodes"] = [NodeRecord(**n) for n in raw["nodes"]]
            return cls(**raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise OperationFailed(
                f"the upgrade journal {where} is not readable; inspect it, then delete it to start over"
            ) from None


def _is(value: object, annotation: str) -> bool:
    """``value`` fits a field annotated ``annotation`` (the few shapes the journal uses)."""
    if annotation.endswith(" | None"):
        return value is None or _is(value, annotation.removesuffix(" | None"))
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if annotation == "dict[str, float]":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in value.items()
        )
    return True  # nodes: checked one by one


def _check_types(cls: type, raw: object) -> None:
    """A TypeError unless every field in ``raw`` has its dataclass field's type: a journal
    someone edited (or another program wrote) is refused as a whole, not half-used."""
    import dataclasses

    if not isinstance(raw, dict):
        raise TypeError(cls.__name__)
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in types or not _is(value, types[key]):
            raise TypeError(f"{cls.__name__}.{key}")


class JournalTaken(OperationFailed):
    """Another run wrote the journal since this one read it."""


def owner() -> str:
    """``host/pid/start``: enough to tell, on the same machine, whether that run still lives."""
    from kubecare.kube.lock import start_time

    return f"{socket.gethostname()}/{os.getpid()}/{start_time(os.getpid()) or 0}"


#: A running journal not written for this long belongs to a run that is gone (a live run
#: writes it at least every HEARTBEAT seconds).
HEARTBEAT = 20.0
STALE = 90.0


def check_owner(journal: Journal, *, take_over: bool = False) -> None:
    """Refuse to resume a journal another live run is working on."""
    from kubecare.kube.lock import start_time

    if journal.state != "running" or take_over:
        return
    host, _, rest = journal.owner.partition("/")
    pid_text, _, start_text = rest.partition("/")
    # Same machine and a readable /proc (our own start time known): the owner's process tells.
    if host == socket.gethostname() and pid_text.isdigit() and start_time(os.getpid()):
        pid = int(pid_text)
        alive = pid != os.getpid() and start_time(pid) is not None
        if alive and (not start_text or str(start_time(pid)) == start_text):
            raise OperationFailed(
                f"another kubecare upgrade is running (pid {pid} on this machine); wait for it "
                "(kubecare upgrade status), or stop it and run this again"
            )
        return  # its process is gone: take over
    try:
        updated = datetime.datetime.fromisoformat(journal.updated.replace("Z", "+00:00"))
        age = (datetime.datetime.now(datetime.UTC) - updated).total_seconds()
    except ValueError:
        age = STALE
    if age < STALE:
        raise OperationFailed(
            f"another kubecare upgrade is running on {host} (journal updated {age:.0f}s ago); "
            f"wait for it, or if that machine is gone pass --take-over (or wait {STALE:.0f}s)"
        )


class Store(Protocol):
    where: str

    async def load(self) -> Journal | None: ...
    async def save(self, journal: Journal) -> None: ...
    async def delete(self) -> None: ...
    async def hold(self) -> None: ...
    def release(self) -> None: ...


class ConfigMapStore:
    """The journal as a ConfigMap; writes carry the resourceVersion last read."""

    def __init__(self, kube: Kube, namespace: str = DEFAULT_NAMESPACE, name: str = DEFAULT_NAME):
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.version: str | None = None
        self.where = f"configmap {namespace}/{name}"
        # the journal text of a write that failed without an answer (it may have landed)
        self._unanswered: str | None = None

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps/{self.name}"

    async def load(self) -> Journal | None:
        try:
            cm = await self.kube.get_json(self._path, what=self.where)
        except NotFound:
            self.version = None
            return None
        self.version = cm["metadata"]["resourceVersion"]
        data = (cm.get("data") or {}).get(KEY)
        if data is None:
            raise OperationFailed(f"{self.where} holds no {KEY}; delete it to start over")
        return Journal.from_json(data, self.where)

    async def save(self, journal: Journal) -> None:
        """Write the journal over the version last read or written. A write whose answer was
        lost (the apiserver restarting: a 5xx, a reset, a timeout) may still have been
        committed; the next write then meets 409 on the old resourceVersion. That is not
        another run: if the ConfigMap holds exactly what the lost write sent, its version is
        adopted and the write goes on; anything else is someone else's, and fatal."""
        journal.updated = now()
        data = journal.to_json().decode()
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "kubecare"},
            },
            "data": {KEY: data},
        }
        try:
            try:
                cm = await self._write(body)
            except Conflict:
                if self._unanswered is None or not await self._landed(self._unanswered):
                    raise
                cm = await self._write(body)  # over the version our lost write made
        except Conflict:
            self._unanswered = None
            raise JournalTaken(
                f"{self.where} was changed by someone else (another upgrade run?); check "
                "kubecare upgrade status, then run the command again"
            ) from None
        except TRANSIENT:
            self._unanswered = data  # committed or not: the next write finds out
            raise
        self._unanswered = None
        self.version = cm["metadata"]["resourceVersion"]

    async def _write(self, body: dict[str, Any]) -> JSON:
        if self.version is None:
            return await self.kube.request_json(
                "POST", f"/api/v1/namespaces/{self.namespace}/configmaps", body=body,
                what=self.where,
            )  # fmt: skip
        body["metadata"]["resourceVersion"] = self.version
        return await self.kube.request_json("PUT", self._path, body=body, what=self.where)

    async def _landed(self, sent: str) -> bool:
        """Whether the ConfigMap holds ``sent`` (our unanswered write); if so, take its version."""
        try:
            cm = await self.kube.get_json(self._path, what=self.where)
        except NotFound:
            return False
        if (cm.get("data") or {}).get(KEY) != sent:
            return False
        self.version = cm["metadata"]["resourceVersion"]
        return True

    async def delete(self) -> None:
        with contextlib.suppress(NotFound):
            await self.kube.request_json("DELETE", self._path, what=self.where)
        self.version = None

    async def hold(self) -> None:
        """Nothing to take: every write carries the resourceVersion it read."""

    def release(self) -> None:
        pass


class FileStore:
    """A local file has no resourceVersion: a run holds an exclusive lock on ``<file>.lock``
    for as long as it works on the journal, so two runs on this machine never share it."""

    def __init__(self, path: Path):
        self.path = path.expanduser()
        self.where = str(self.path)
        self._lock: int | None = None

    async def hold(self) -> None:
        import fcntl

        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise OperationFailed(f"cannot open {lock}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OperationFailed(
                f"another kubecare upgrade is using the journal {self.path}; wait for it "
                "(kubecare upgrade status --journal ...)"
            ) from None
        self._lock = fd

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor drops the lock
            self._lock = None

    async def load(self) -> Journal | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OperationFailed(
                f"cannot read the upgrade journal {self.path}: {e.strerror}"
            ) from None
        return Journal.from_json(data, self.where)

    async def save(self, journal: Journal) -> None:
        journal.updated = now()
        try:
            write_atomic(self.path, journal.to_json(), mode=0o600)
        except OSError as e:
            raise OperationFailed(
                f"cannot write the upgrade journal {self.path}: {e.strerror}"
            ) from None

    async def delete(self) -> None:
        self.path.unlink(missing_ok=True)
