"""`kubecare etcd member add|remove|promote|replace`: membership changes that never cost quorum.

Replacing a failed stacked member the safe way (etcd's runtime-reconfiguration guide, and what
kubeadm's join does for a new control plane):

1. stop what is left of it: its etcd.yaml moved out of the manifests dir (kept, hidden, next
   to it), until its probe stops answering;
2. remove it from the cluster (the others must keep a quorum of the smaller cluster);
3. move its old data aside (never deleted: ``<data-dir>/member.kubecare-replaced-<time>``);
4. add it back as a learner, at the same peer URL (a learner does not vote, so the cluster's
   quorum does not change while it catches up);
5. write its etcd.yaml as kubeadm's join writes one: ``--initial-cluster`` naming every member,
   ``--initial-cluster-state=existing``;
6. promote it once etcd says it has caught up (etcd refuses a learner that is not in sync; the
   promotion is retried, as kubeadm does), and wait until every member is healthy.

A rerun after an interruption finds where it stopped: a member that is gone from the list is
added; a learner of its peer URL is promoted. :func:`plan_replace` and the add/remove guards
are pure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import EtcdError
from ..files import write_atomic
from .cluster import ClusterView, MemberView, Target, survey
from .grpc import member_add, member_promote
from .maintenance import member_remove
from .members import Member, Reach

Progress = Callable[[str], None]

PROMOTE_TIMEOUT = 180.0
STOP_TIMEOUT = 90.0


def find(view: ClusterView, who: str) -> MemberView:
    """A member by name or hex ID."""
    for m in view.members:
        if who in (m.name, f"{m.id:x}"):
            return m
    raise EtcdError(
        f"no etcd member {who!r}; members: "
        + ", ".join(sorted(f"{m.label} ({m.id:x})" for m in view.members))
    )


def _serving_voters(view: ClusterView, without: int = 0) -> int:
    return len([m for m in view.voting if m.has_leader and m.id != without])


def check_remove(view: ClusterView, member: MemberView) -> None:
    """Refuse a removal after which the remaining voters could not make a quorum."""
    if member.is_learner:
        return
    # the removal is committed under the current configuration: that needs its quorum first
    if _serving_voters(view) < view.quorum:
        raise EtcdError(
            f"only {_serving_voters(view)} of {len(view.voting)} voting members serve, below "
            f"the quorum of {view.quorum}: no membership change can be committed"
        )
    left = len(view.voting) - 1
    if left == 0:
        raise EtcdError(f"{member.label} is the cluster's only voting member; it cannot go")
    serving = _serving_voters(view, without=member.id)
    need = left // 2 + 1
    if serving < need:
        raise EtcdError(
            f"removing {member.label} would leave {serving} serving of {left} voting members, "
            f"below the quorum of {need}; bring the others back first"
        )


def check_add(view: ClusterView, *, learner: bool) -> None:
    """Refuse a voting member the cluster cannot make a quorum with until it starts (etcd's
    --strict-reconfig-check refuses the same; a learner never counts)."""
    if learner:
        return
    total = len(view.voting) + 1
    need = total // 2 + 1
    serving = _serving_voters(view)
    if serving < need:
        raise EtcdError(
            f"adding a voting member would make {total} voting members with {serving} serving, "
            f"below the quorum of {need} until it starts; add it as a learner (--learner) "
            "and promote it once it has caught up"
        )


@dataclass(frozen=True)
class ReplacePlan:
    name: str
    peer_url: str
    remove: int  # the member ID to remove (0: already removed)
    add: bool  # whether to add it (False: a learner of its peer URL is there already)
    learner_id: int  # the learner to promote, when it is there already (0: not yet)
    steps: tuple[str, ...]


def plan_replace(
    view: ClusterView, name: str, peer_url: str, *, force: bool = False
) -> ReplacePlan:
    listed = next((m for m in view.members if m.name == name and name), None)
    learner = next((m for m in view.members if m.is_learner and peer_url in m.peer_urls), None)
    steps = [f"stop etcd on {name} (its etcd.yaml moved out of the manifests dir)"]
    if learner is not None and (listed is None or listed.id == learner.id):
        # a rerun: the old member is gone and its learner is in
        steps += [
            f"write {name}'s etcd.yaml as kubeadm's join does (--initial-cluster-state=existing)",
            f"promote learner {learner.id:x} once it has caught up",
        ]
        return ReplacePlan(name, peer_url, 0, False, learner.id, tuple(steps))
    remove = 0
    if listed is not None:
        if listed.has_leader and not force:
            raise EtcdError(
                f"etcd member {name} is healthy; replace only a failed member "
                "(--force to replace it anyway)"
            )
        check_remove(view, listed)
        remove = listed.id
        steps.append(f"remove member {listed.id:x} ({name}) from the cluster")
    else:
        by_url = next((m for m in view.members if peer_url in m.peer_urls), None)
        if by_url is not None:
            raise EtcdError(
                f"{peer_url} belongs to member {by_url.label} ({by_url.id:x}), not {name}; "
                "remove it first"
            )
    steps += [
        f"move {name}'s data dir aside (kept, never deleted)",
        f"add {name} back as a learner at {peer_url}",
        f"write {name}'s etcd.yaml as kubeadm's join does (--initial-cluster-state=existing)",
        f"promote {name} once it has caught up, then wait until every member is healthy",
    ]
    return ReplacePlan(name, peer_url, remove, True, 0, tuple(steps))


def join_manifest(text: str, initial_cluster: str) -> str:
    """etcd.yaml with kubeadm's join flags: every member in --initial-cluster, and state
    existing (kubeadm's etcd phase, CreateStackedEtcdStaticPodManifestFile for a join)."""
    import yaml

    doc = yaml.safe_load(text)
    container = doc["spec"]["containers"][0]
    key = "command" if container.get("command") else "args"
    args = [
        a
        for a in container[key]
        if not str(a).startswith(("--initial-cluster=", "--initial-cluster-state="))
    ]
    args += [f"--initial-cluster={initial_cluster}", "--initial-cluster-state=existing"]
    container[key] = args
    return str(yaml.safe_dump(doc, sort_keys=False))


def initial_cluster(members: list[tuple[str, tuple[str, ...]]]) -> str:
    """etcd's --initial-cluster: name=peerURL for every member with a name."""
    return ",".join(f"{n}={u}" for n, urls in members if n for u in urls)


@dataclass
class ReplaceReport:
    name: str
    removed: int = 0
    added: int = 0
    promoted: bool = False
    kept: list[str] | None = None
    seconds: float = 0.0


def _hidden(manifest: Path) -> Path:
    """Where the member's etcd.yaml waits while it is stopped: hidden (the kubelet and the
    sandbox's runner ignore dotfiles) in the manifests dir."""
    return manifest.with_name(f".{manifest.name}.kubecare-replace")


def manifest_text(member_manifest: Path) -> str:
    """The member's etcd.yaml, or the copy a replace hid (a rerun after an interruption)."""
    for path in (member_manifest, _hidden(member_manifest)):
        if path.exists():
            return path.read_text()
    raise EtcdError(f"{member_manifest} not found (and no copy hidden by an earlier replace)")


async def run_replace(
    targets: list[Target],
    member: Member,
    plan: ReplacePlan,
    *,
    reach: Reach,
    dial_advertised: bool,
    progress: Progress | None = None,
    promote_timeout: float = PROMOTE_TIMEOUT,
) -> ReplaceReport:
    from .restore import _is, _wait, probe_url

    say = progress or (lambda _m: None)
    report = ReplaceReport(plan.name)
    # A rerun after an interruption finds the manifest hidden, so the member came in as a
    # target without an endpoint; it has one again once its manifest is written back, and the
    # last wait must ask it.
    targets = [
        Target(member.endpoint, member.name) if t.name == member.name else t for t in targets
    ]
    t0 = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    manifest = member.manifest
    hidden = _hidden(manifest)
    text = manifest_text(manifest)
    url = probe_url(manifest if manifest.exists() else hidden, reach)
    if manifest.exists():
        say(f"stopping etcd on {plan.name}")
        os.replace(manifest, hidden)
    try:
        await _wait(f"etcd on {plan.name} to stop", partial(_is, url, 0), STOP_TIMEOUT)
    except Exception as e:
        raise EtcdError(str(e)) from None
    view = await survey(targets, dial_advertised=dial_advertised)
    healthy = view.serving_voter()
    if healthy is None or healthy.endpoint is None:
        raise EtcdError(f"no etcd member serves; {plan.name}'s etcd.yaml is hidden at {hidden}")
    ep = healthy.endpoint
    learner_id = plan.learner_id
    if plan.remove:
        say(f"removing member {plan.remove:x} ({plan.name})")
        await member_remove(ep, plan.remove)
        report.removed = plan.remove
    if plan.add:
        # etcd keeps everything in <data-dir>/member; that is moved aside, not the data dir
        # itself, which may be a mount point
        old = member.data_dir / "member"
        if old.exists():
            aside = old.with_name(f"member.kubecare-replaced-{stamp}")
            say(f"moving {old} aside to {aside}")
            os.rename(old, aside)
            report.kept = [str(aside)]
        say(f"adding {plan.name} as a learner at {plan.peer_url}")
        learner_id, members = await member_add(ep, plan.peer_url, learner=True)
        report.added = learner_id
    else:
        from .grpc import member_list

        members = await member_list(ep)
    listed = [(plan.name if m.id == learner_id else m.name, m.peer_urls) for m in members]
    new = join_manifest(text, initial_cluster(listed))
    say(f"writing {manifest} (--initial-cluster-state=existing)")
    write_atomic(manifest, new, mode=0o600)
    if hidden.exists():
        kept = manifest.parent.parent / f"etcd.yaml.kubecare-{stamp}"
        shutil.move(str(hidden), kept)
        os.chmod(kept, 0o600)
        report.kept = [*(report.kept or []), str(kept)]
    say(f"waiting for {plan.name} to catch up, then promoting it")
    deadline = time.monotonic() + promote_timeout
    last = ""
    while True:
        try:
            await member_promote(ep, learner_id)
            break
        except EtcdError as e:
            last = str(e)
            if "in sync with leader" not in last:  # etcd's ErrLearnerNotReady: retry
                raise
        if time.monotonic() > deadline:
            raise EtcdError(
                f"{plan.name} did not catch up within {promote_timeout:.0f}s ({last}); it stays "
                f"a learner: rerun the replace to promote it"
            )
        await asyncio.sleep(1.0)
    report.promoted = True
    deadline = time.monotonic() + promote_timeout
    while True:
        view = await survey(targets, dial_advertised=dial_advertised)
        if all(m.has_leader for m in view.members):
            break
        if time.monotonic() > deadline:
            down = ", ".join(m.label for m in view.members if not m.has_leader)
            raise EtcdError(f"promoted, but not every member is healthy yet: {down}")
        await asyncio.sleep(1.0)
    report.seconds = time.monotonic() - t0
    return report
