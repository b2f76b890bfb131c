"""``etcd restore``: the guided restore of a kubeadm control plane from a snapshot.

The procedure is etcd's disaster-recovery guide and Kubernetes' "Restoring an etcd cluster",
done through the static pod manifests as an administrator would:

1. check the snapshot (bbolt structure, SHA-256, revision) and etcdutl;
2. ``etcdutl snapshot restore`` it for every member into a **new** data dir (same snapshot,
   same new cluster token, each member's name and peer URL from its manifest) — nothing on the
   cluster has changed yet;
3. stop every kube-apiserver (its manifest moved aside to a hidden name, which the kubelet
   ignores) and wait until none serves: no apiserver may run while etcd is swapped;
4. stop every etcd (etcd.yaml copied to ``.etcd.yaml.kubecare-STAMP``, then removed);
5. write each etcd.yaml back with its data hostPath (or --data-dir) pointing at the new dir, and
   wait until every member is healthy and serves the snapshot's revision;
6. start the apiservers again and wait for /readyz; restart kube-controller-manager and
   kube-scheduler the same way so no controller acts on a cache from before the restore.

The old data dirs are never touched; the first failing step stops the run and the error says
exactly how to roll back.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import EtcdError, OperationFailed, UsageError
from ..files import write_atomic
from .grpc import member_status
from .members import Member, Reach, as_written

APISERVER, CONTROLLER_MANAGER, SCHEDULER = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
)
STOP_TIMEOUT = 90.0  # a kubelet gives the apiserver 30 s of grace, then kills it
ETCD_TIMEOUT = 120.0
# A per-node restore waits for the other nodes' runs: its member has no quorum before they come.
QUORUM_TIMEOUT = 600.0
READY_TIMEOUT = 240.0  # kubeadm waits 4 minutes for a control-plane component


class RestoreFailed(OperationFailed):
    """A step of the restore failed; the message ends with how to roll back."""


@dataclass(frozen=True)
class MemberRestore:
    member: Member
    new_data_dir: Path
    argv: tuple[str, ...]  # the etcdutl command

    @property
    def manifests(self) -> Path:
        return self.member.manifest.parent


@dataclass(frozen=True)
class RestorePlan:
    snapshot: Path
    revision: int  # the snapshot's; the restored cluster must serve exactly this
    token: str
    stamp: str
    members: tuple[MemberRestore, ...]
    restart_controllers: bool = True
    bump: int = 0  # --bump-revision (with --mark-compacted): watchers relist instead of reusing
    others: tuple[str, ...] = ()  # per-node restore: the members other runs restore
    shared_token: str = ""  # per-node restore: the --initial-cluster-token every run is given
    cluster_id: int = 0  # what the restored members must report (etcd's own derivation)
    quorum_timeout: float = QUORUM_TIMEOUT
    reach: Reach = as_written  # how this process dials what the manifests name (probes)

    @property
    def expected_revision(self) -> int:
        """What the restored etcd serves before anything writes to it."""
        return self.revision + self.bump

    def steps(self) -> list[str]:
        out = []
        if self.others:
            out.append(
                f"first: stop {APISERVER} on every control-plane node, and run this same "
                f"restore (same snapshot, --bump-revision, --initial-cluster and "
                f"--initial-cluster-token {self.shared_token}) for {', '.join(self.others)} on "
                "their own machines"
            )
        out.append(
            f"check {self.snapshot} (structure, SHA-256) and etcdutl; revision {self.revision}"
        )
        out += [f"run: {' '.join(m.argv)}" for m in self.members]
        for m in self.members:
            out.append(
                f"stop {APISERVER} on {m.member.name}: move {m.manifests}/{APISERVER}.yaml aside"
            )
        for m in self.members:
            out.append(
                f"stop etcd {m.member.name}: back up {m.member.manifest} to {backup_name(m.member.manifest, self.stamp)}, remove it"
            )
        for m in self.members:
            out.append(
                f"start etcd {m.member.name} on {m.new_data_dir} (etcd.yaml's data dir rewritten)"
            )
        if self.others:
            out.append(
                f"wait until {', '.join(m.member.name for m in self.members)} is healthy at "
                f"revision {self.expected_revision} (it needs a quorum: the other nodes' runs)"
            )
        else:
            out.append(f"wait until every member is healthy at revision {self.expected_revision}")
        out.append(f"start {APISERVER} again and wait for /readyz")
        if self.restart_controllers:
            out.append(
                f"restart {CONTROLLER_MANAGER} and {SCHEDULER} (their caches predate the restore)"
            )
        out.append("then: restart the kubelet on every node (systemctl restart kubelet)")
        return out


def _base(name: str) -> str:
    """A data dir's name less an earlier restore's suffix (``etcd-restore-20261207T004220`` ->
    ``etcd``): a second restore is not ``etcd-restore-A-restore-B``."""
    return re.sub(r"-restore-\d{8}T\d{6}$", "", name)


def backup_name(path: Path, stamp: str) -> Path:
    """Next to the file, hidden (the kubelet ignores dotfiles), with a timestamp."""
    return path.with_name(f".{path.name}.kubecare-{stamp}")


def plan_restore(
    snapshot: Path,
    revision: int,
    members: list[Member],
    *,
    etcdutl: Path,
    stamp: str,
    data_dir: Path | None = None,
    skip_hash_check: bool = False,
    restart_controllers: bool = True,
    bump: int = 0,
    cluster: list[tuple[str, str]] | None = None,
    token: str | None = None,
    snapshot_digest: str = "",
    quorum_timeout: float = QUORUM_TIMEOUT,
    reach: Reach = as_written,
) -> RestorePlan:
    """The restore, as data. Every member restores the same snapshot with one new token.

    ``cluster`` (name, peer URL): the whole restored cluster when ``members`` are only this
    node's (a per-node restore: every node runs it with the same cluster and ``token``);
    default: ``members`` are the whole cluster. A per-node restore hands etcdutl the token mixed
    with ``snapshot_digest`` and ``bump``: runs given another snapshot or bump then make
    clusters of different IDs, which never form a quorum together."""
    import hashlib

    from .membership import cluster_id

    if not members:
        raise UsageError("no etcd member to restore")
    if data_dir is not None and len(members) > 1:
        raise UsageError("--data-dir names one dir; with several members each gets its own")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise UsageError(f"two etcd manifests name the same member: {', '.join(names)}")
    missing = [m.name for m in members if not m.peer_url]
    if missing:
        raise EtcdError(
            f"etcd.yaml of {', '.join(missing)} has no --initial-advertise-peer-urls; "
            "it does not look like kubeadm's"
        )
    shared = token or ""
    if cluster and token:
        mix = hashlib.sha256(f"{snapshot_digest}:{bump}".encode()).hexdigest()[:12]
        token = f"{token}-{mix}"
    token = token or f"kubecare-restore-{stamp}"
    # Every node's run of a per-node restore names its dir after the token they share, so the
    # dir has one path on every node: kubeadm-config holds one etcd.local.dataDir for them all.
    suffix = re.sub(r"[^A-Za-z0-9._-]", "-", shared) if cluster and shared else stamp
    pairs = cluster or [(m.name, m.peer_url) for m in members]
    initial = ",".join(f"{name}={url}" for name, url in pairs)
    here = set(names)
    others = tuple(dict.fromkeys(name for name, _ in pairs if name not in here))
    out = []
    for m in members:
        new = data_dir or m.data_dir.with_name(f"{_base(m.data_dir.name)}-restore-{suffix}")
        m.tree.node(new)  # a dir the member's node cannot see is refused now, not mid-restore
        argv = [
            str(etcdutl),
            "snapshot",
            "restore",
            str(snapshot),
            f"--name={m.name}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={token}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--data-dir={new}",
        ]
        if skip_hash_check:
            argv.append("--skip-hash-check")
        if bump:
            # etcd's advice for clusters with watchers (Kubernetes): revisions move past every
            # one a client has seen, and the old ones read as compacted, so caches relist.
            argv += [f"--bump-revision={bump}", "--mark-compacted"]
        out.append(MemberRestore(m, new, tuple(argv)))
    return RestorePlan(
        snapshot,
        revision,
        token,
        stamp,
        tuple(out),
        restart_controllers,
        bump,
        others,
        shared,
        cluster_id(pairs, token),
        quorum_timeout or QUORUM_TIMEOUT,
        reach,
    )


def pointed_at(text: str, member: Member, new_dir: Path) -> str:
    """etcd.yaml with its data dir moved to ``new_dir`` (this process's path; the manifest gets
    the node's), as the CKA way does it: kubeadm mounts the data dir as volume etcd-data, so its
    hostPath changes and --data-dir stays. Otherwise --data-dir changes (to the container path
    of ``new_dir``, mounting it when no volume has it)."""
    import yaml

    tree = member.tree
    node_new = str(tree.node(new_dir))  # what the node's kubelet will look for
    doc = yaml.safe_load(text)
    spec = doc["spec"]
    container = spec["containers"][0]
    volumes = spec.setdefault("volumes", [])
    target = node_new  # the path --data-dir must name, as the container sees it
    if member.data_volume:
        # (a manifest's lists may hold anything; the member was read from the dicts in them)
        volume = next(
            v for v in volumes if isinstance(v, dict) and v.get("name") == member.data_volume
        )
        root = tree.local(Path(volume["hostPath"]["path"]))
        if os.path.normpath(member.data_dir) == os.path.normpath(root):
            volume["hostPath"]["path"] = node_new
            return str(yaml.safe_dump(doc, sort_keys=False))
        mount = next(
            m["mountPath"]
            for m in container.get("volumeMounts") or []
            if isinstance(m, dict) and m.get("name") == member.data_volume
        )
        inside = os.path.relpath(new_dir, root)
        if inside.startswith(".."):
            volumes.append(
                {
                    "hostPath": {"path": node_new, "type": "DirectoryOrCreate"},
                    "name": "etcd-data-restored",
                }
            )
            container.setdefault("volumeMounts", []).append(
                {"mountPath": node_new, "name": "etcd-data-restored"}
            )
        else:
            target = os.path.join(mount, inside)
    for key in ("command", "args"):
        if container.get(key):
            container[key] = [
                f"--data-dir={target}" if str(a).startswith("--data-dir=") else a
                for a in container[key]
            ]
    return str(yaml.safe_dump(doc, sort_keys=False))


# -- running it ------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    plan: RestorePlan
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)
    revision: int = 0  # what the restored etcd served before the apiservers came back
    backups: list[Path] = field(default_factory=list)
    kubeadm_config: str = ""  # what became of kubeadm-config's etcd.local.dataDir

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot": str(self.plan.snapshot),
            "revision": self.revision,
            "members": [
                {
                    "name": m.member.name,
                    "manifest": str(m.member.manifest),
                    "oldDataDir": str(m.member.data_dir),
                    "newDataDir": str(m.new_data_dir),
                }
                for m in self.plan.members
            ],
            "backups": [str(b) for b in self.backups],
            "steps": [{"step": s, "seconds": round(t, 2)} for s, t in self.steps],
            "seconds": round(sum(t for _, t in self.steps), 2),
            "kubeadmConfig": self.kubeadm_config,
        }


Say = Callable[[str], None]


class _Manifests:
    """The manifest moves of one restore, undone in the error message if a step fails."""

    def __init__(self, stamp: str) -> None:
        self.stamp = stamp
        self.moved: list[tuple[Path, Path]] = []  # (hidden, original): put back on rollback
        self.etcd: list[tuple[Path, Path]] = []  # (backup, original)
        self.restored = False  # etcd serves the snapshot: from here on, finish, never undo

    def hide(self, manifest: Path) -> Path:
        hidden = backup_name(manifest, self.stamp)
        if hidden.exists():
            raise RestoreFailed(f"{hidden} exists already (a restore with this timestamp?)")
        os.rename(manifest, hidden)
        self.moved.append((hidden, manifest))
        return hidden

    def unhide(self, manifest: Path) -> None:
        for i, (hidden, original) in enumerate(self.moved):
            if original == manifest:
                os.rename(hidden, original)
                del self.moved[i]
                return

    def rollback(self, members: tuple[MemberRestore, ...]) -> str:
        if self.restored:
            # Putting the old etcd.yaml back now would swap etcd under running apiservers.
            rest = "; ".join(f"mv {h} {o}" for h, o in self.moved)
            return (
                "etcd already serves the restored data; finish by hand: "
                + (rest or "check the control-plane components")
                + " (the old data dirs are untouched)"
            )
        cmds = [f"mv {b} {o}" for b, o in self.etcd]  # the old etcd.yaml, on the old data dir
        cmds += [f"mv {h} {o}" for h, o in self.moved]
        news = " ".join(str(m.new_data_dir) for m in members)
        if not cmds:
            return f"nothing on the cluster was changed; remove the restored dirs if you like: rm -rf {news}"
        return (
            "to roll back (the old data dirs are untouched): "
            + "; ".join(cmds)
            + f"; then remove the restored dirs: rm -rf {news}"
        )


async def _probe(url: str) -> int:
    """HTTP status of a kubelet-style probe (no certificate check, as the kubelet's); 0 when
    nothing answers."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def get() -> int:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (OSError, ValueError):
            return 0

    return await asyncio.to_thread(get)


def probe_url(manifest: Path, reach: Reach = as_written) -> str:
    """The URL of the probe that tells a static pod serves, as this process dials it."""
    import yaml

    from ..podprobes import ProbeError, serving_probe

    try:
        doc = yaml.safe_load(manifest.read_text())
        probe = serving_probe(doc, str(manifest))
    except (OSError, yaml.YAMLError, ProbeError, AttributeError, TypeError) as e:
        raise RestoreFailed(f"{manifest}: cannot find its probe ({e})") from None
    if probe is None:
        raise RestoreFailed(f"{manifest} has no httpGet probe to tell when it serves")
    return reach(manifest.parent, probe.url)


async def _wait(
    what: str, check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.5
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise RestoreFailed(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(interval)


async def run_restore(plan: RestorePlan, say: Say) -> RestoreReport:
    """Carry the plan out (step 1, the checks, is the caller's). Raises RestoreFailed."""
    report = RestoreReport(plan)
    moves = _Manifests(plan.stamp)
    clock = time.monotonic

    async def step(title: str, work: Callable[[], Any]) -> None:
        say(f"- {title}")
        t0 = clock()
        await work()
        report.steps.append((title, clock() - t0))

    def component(m: MemberRestore, name: str) -> Path:
        return m.manifests / f"{name}.yaml"

    try:

        async def restore_dirs() -> None:
            for m in plan.members:
                if m.new_data_dir.exists() and any(m.new_data_dir.iterdir()):
                    raise RestoreFailed(
                        f"{m.new_data_dir} exists and is not empty; choose another --data-dir"
                    )
                proc = await asyncio.create_subprocess_exec(
                    *m.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
                )
                out, _ = await proc.communicate()
                if proc.returncode != 0:
                    last = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
                    raise RestoreFailed(
                        f"etcdutl snapshot restore for {m.member.name} failed: "
                        f"{last[-1] if last else f'exit code {proc.returncode}'}"
                    )

        await step("restore the snapshot into new data dirs (etcdutl)", restore_dirs)

        apiservers = [(m, component(m, APISERVER)) for m in plan.members]
        api_urls = {str(p): probe_url(p, plan.reach) for _, p in apiservers if p.exists()}

        async def stop_apiservers() -> None:
            for _, p in apiservers:
                if p.exists():
                    moves.hide(p)
            for url in api_urls.values():
                await _wait(f"{APISERVER} at {url} to stop", partial(_is, url, 0), STOP_TIMEOUT)

        await step(f"stop every {APISERVER}", stop_apiservers)

        etcd_urls = {m.member.name: probe_url(m.member.manifest, plan.reach) for m in plan.members}
        texts = {m.member.name: m.member.manifest.read_text() for m in plan.members}

        async def stop_etcd() -> None:
            for m in plan.members:
                backup = backup_name(m.member.manifest, plan.stamp)
                shutil.copy2(m.member.manifest, backup)
                os.chmod(backup, 0o600)
                moves.etcd.append((backup, m.member.manifest))
                report.backups.append(backup)
                m.member.manifest.unlink()
            for name, url in etcd_urls.items():
                await _wait(f"etcd {name} to stop", partial(_is, url, 0), STOP_TIMEOUT)

        await step("stop every etcd member", stop_etcd)

        async def start_etcd() -> None:
            for m in plan.members:
                write_atomic(
                    m.member.manifest,
                    pointed_at(texts[m.member.name], m.member, m.new_data_dir),
                    mode=0o600,
                )

            async def healthy() -> bool:
                try:
                    states = [await member_status(m.member.endpoint, 2) for m in plan.members]
                except EtcdError:
                    return False
                report.revision = states[0].revision
                strangers = [
                    (m.member.name, st.cluster_id)
                    for m, st in zip(plan.members, states, strict=True)
                    if st.cluster_id != plan.cluster_id
                ]
                if strangers and all(st.healthy for st in states):
                    name, cid = strangers[0]
                    raise RestoreFailed(
                        f"etcd member {name} serves cluster {cid:x}, not the restored cluster "
                        f"{plan.cluster_id:x}: it is not running on the restored data"
                        + (
                            ", or another node's run restored another snapshot or bump"
                            if plan.others
                            else ""
                        )
                    )
                return all(s.healthy for s in states)

            if plan.others:
                say(
                    f"  waiting for a quorum: run the same restore for {', '.join(plan.others)} "
                    "on their machines"
                )
            await _wait(
                "the restored etcd members to become healthy",
                healthy,
                plan.quorum_timeout if plan.others else ETCD_TIMEOUT,
            )
            # A per-node run may see the other nodes' apiservers write already; its own member
            # serves only its restored data dir, so anything from the expected revision on is
            # the restore.
            if report.revision != plan.expected_revision and not (
                plan.others and report.revision > plan.expected_revision
            ):
                raise RestoreFailed(
                    f"the restored etcd serves revision {report.revision}, expected "
                    f"{plan.expected_revision} (the snapshot's {plan.revision} + {plan.bump})"
                )
            moves.restored = True

        await step("start etcd on the restored data", start_etcd)

        async def start_apiservers() -> None:
            for _, p in apiservers:
                moves.unhide(p)
            for url in api_urls.values():
                await _wait(
                    f"{APISERVER} at {url} to be ready", partial(_is, url, 200), READY_TIMEOUT
                )

        await step(f"start {APISERVER} and wait for /readyz", start_apiservers)

        if plan.restart_controllers:

            async def restart_controllers() -> None:
                for name in (CONTROLLER_MANAGER, SCHEDULER):
                    for m in plan.members:
                        p = component(m, name)
                        if not p.exists():
                            continue
                        url = probe_url(p, plan.reach)
                        moves.hide(p)
                        await _wait(
                            f"{name} on {m.member.name} to stop",
                            partial(_is, url, 0),
                            STOP_TIMEOUT,
                        )
                        moves.unhide(p)
                        await _wait(
                            f"{name} on {m.member.name} to be healthy",
                            partial(_is, url, 200),
                            READY_TIMEOUT,
                        )

            await step(f"restart {CONTROLLER_MANAGER} and {SCHEDULER}", restart_controllers)
    except (RestoreFailed, OSError, EtcdError) as e:
        raise RestoreFailed(f"{e}; {moves.rollback(plan.members)}{_others(plan)}") from None
    except BaseException:
        say(f"interrupted; {moves.rollback(plan.members)}{_others(plan)}")
        raise
    return report


def _others(plan: RestorePlan) -> str:
    if not plan.others:
        return ""
    return (
        f" — this node only: the runs on {', '.join(plan.others)} may have restored already; "
        "roll every node back, or finish them all"
    )


async def _is(url: str, want: int) -> bool:
    """0: nothing answers (stopped); 200: ready."""
    status = await _probe(url)
    return status == 0 if want == 0 else status == want
