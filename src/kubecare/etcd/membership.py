"""Who a restore must cover: the members etcd has, and the checks that keep a restore whole.

A restore that leaves a member out splits the cluster: the member keeps the old data, and with
the others it may still have a quorum. So the members etcd has come from etcd itself
(MemberList) when it answers; when it does not (the usual reason to restore), from every
source that can name them — the union of every manifest's ``--initial-cluster`` and of every
old data dir's membership records — never from one manifest alone: kubeadm writes
``--initial-cluster=<self>`` on the first control plane, so its manifest names one member of
three.

Pure except :func:`known_members`, which asks etcd and reads the data dirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import EtcdError, UsageError
from .members import Member


@dataclass(frozen=True)
class Known:
    """A member etcd has, by name (empty for one added but never started) and peer URLs."""

    name: str
    peer_urls: tuple[str, ...]

    def label(self) -> str:
        return self.name or ",".join(self.peer_urls)


def parse_initial_cluster(
    text: str, *, what: str = "--initial-cluster", single: bool = False
) -> list[Known]:
    """etcd's ``--initial-cluster`` (``name=peerURL,...``; a name given twice has two URLs,
    which ``single`` refuses: a restore gives each member one, as kubeadm does)."""
    out: dict[str, list[str]] = {}
    for item in text.split(","):
        name, eq, url = item.strip().partition("=")
        if not eq or not name or "://" not in url:
            raise UsageError(
                f"{what}: {item.strip() or '(empty)'!r} is not NAME=PEER-URL "
                "(e.g. cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380)"
            )
        if single and name in out:
            raise UsageError(f"{what}: {name} is given twice; give each member one peer URL")
        out.setdefault(name, []).append(url)
    return [Known(name, tuple(urls)) for name, urls in out.items()]


def member_id(peer_urls: tuple[str, ...], token: str) -> int:
    """etcd's computeMemberID (etcdserver/api/membership/member.go) for a new cluster: SHA-1 of
    the sorted peer URLs joined, then the cluster token; the first 8 bytes, big-endian."""
    import hashlib

    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def cluster_id(cluster: list[tuple[str, str]], token: str) -> int:
    """RaftCluster.genID: SHA-1 over the sorted member IDs (8 bytes each, big-endian). The ID a
    restore with this --initial-cluster and token must come up with, whoever ran which member."""
    import hashlib

    ids = sorted(member_id((url,), token) for _, url in cluster)
    digest = hashlib.sha1(b"".join(i.to_bytes(8, "big") for i in ids)).digest()
    return int.from_bytes(digest[:8], "big")


def union(*sources: list[Known]) -> list[Known]:
    """One entry per member: entries sharing a name or a peer URL are the same member."""
    merged: list[tuple[set[str], set[str]]] = []  # (names, urls)
    for source in sources:
        for k in source:
            names, urls = {k.name} - {""}, set(k.peer_urls)
            hits = [m for m in merged if names & m[0] or urls & m[1]]
            for m in hits:
                merged.remove(m)
                names |= m[0]
                urls |= m[1]
            merged.append((names, urls))
    out = [Known(",".join(sorted(n)), tuple(sorted(u))) for n, u in merged]
    return sorted(out, key=lambda k: (k.name, k.peer_urls))


def uncovered(cluster: list[Known], known: list[Known]) -> list[str]:
    """The members of ``known`` that ``cluster`` (what the restore restores) leaves out."""
    names = {k.name for k in cluster}
    urls = {u for k in cluster for u in k.peer_urls}
    return sorted(
        k.label()
        for k in known
        if not set(k.name.split(",")) & names and not urls.intersection(k.peer_urls)
    )


def check_membership(members: list[Member], known: list[Known]) -> None:
    """Refuse a restore of ``members`` (all restored here) that would not cover every member
    etcd has."""
    missing = uncovered([Known(m.name, (m.peer_url,)) for m in members], known)
    if missing:
        every = union([Known(m.name, (m.peer_url,)) for m in members], known)
        # a member added but never started has no name yet: the placeholder says to give one
        cluster = ",".join(
            f"{k.name.split(',')[0] or 'NAME-OF-' + k.peer_urls[0]}={k.peer_urls[0]}" for k in every
        )
        raise UsageError(
            f"etcd has members this restore does not cover: {', '.join(missing)}; every "
            "member must be restored from the same snapshot. Give every control-plane node's "
            "manifests dir (--manifests-dir, repeated) where they are reachable from here, or "
            "restore each node on its own machine with one cluster list and token: "
            f"kubecare etcd restore FILE --initial-cluster {cluster} "
            "--initial-cluster-token TOKEN --yes (--dry-run prints the steps)"
        )


def check_cluster(members: list[Member], cluster: list[Known], known: list[Known]) -> None:
    """A per-node restore (``--initial-cluster``): every member restored here is in the list
    with its own peer URL, and the list covers every member etcd has."""
    by_name = {k.name: k for k in cluster}
    for m in members:
        k = by_name.get(m.name)
        if k is None:
            raise UsageError(
                f"--initial-cluster does not name member {m.name} (its manifest "
                f"{m.manifest}); add {m.name}={m.peer_url}"
            )
        if m.peer_url not in k.peer_urls:
            raise UsageError(
                f"--initial-cluster gives {m.name} {','.join(k.peer_urls)}, but its manifest "
                f"{m.manifest} says {m.peer_url}; the restored member must keep its peer URL"
            )
    missing = uncovered(cluster, known)
    if missing:
        raise UsageError(
            f"--initial-cluster leaves out members etcd has: {', '.join(missing)}; name every "
            "member, and restore each of them from the same snapshot with the same list and token"
        )
    # Every other member as etcd knows it: a wrong URL would make a quorum with a ghost member,
    # an unknown name a cluster larger than the one restored.
    for k in cluster:
        same = [
            x for x in known if k.name in x.name.split(",") or set(k.peer_urls) & set(x.peer_urls)
        ]
        if not same:
            raise UsageError(
                f"--initial-cluster names {k.name}={k.peer_urls[0]}, which etcd does not have; "
                "give only the members etcd has (the refusal without --initial-cluster lists them)"
            )
        urls = {u for x in same for u in x.peer_urls}
        if not set(k.peer_urls) <= urls:
            raise UsageError(
                f"--initial-cluster gives {k.name} {k.peer_urls[0]}, but etcd has it at "
                f"{', '.join(sorted(urls))}; every member keeps its peer URL"
            )


def check_distinct(members: list[Member], probes: Mapping[str, str]) -> None:
    """Refuse members that resolve to one data dir, client endpoint or probe: their manifests
    were copied from other machines (every kubeadm node says /var/lib/etcd and 127.0.0.1), so
    a restore from here would restore this machine's etcd several times over."""
    for what, key in (
        ("data dir", lambda m: str(m.data_dir)),
        ("client endpoint", lambda m: m.endpoint.url),
        ("health probe", lambda m: probes.get(m.name, "")),
    ):
        seen: dict[str, str] = {}
        for m in members:
            value = key(m)
            if not value:
                continue
            if value in seen:
                raise UsageError(
                    f"etcd members {seen[value]} and {m.name} resolve to the same {what} "
                    f"{value} from here: their manifests belong to other machines. Restore "
                    "each node on its own machine: kubecare etcd restore FILE "
                    "--initial-cluster NAME=PEER-URL,... --initial-cluster-token TOKEN --yes"
                )
            seen[value] = m.name


async def known_members(
    members: list[Member], say: Callable[[str], None], *, cluster_given: bool = False
) -> list[Known]:
    """The members etcd has: MemberList from the first member that answers; else the union of
    the manifests' --initial-cluster and the old data dirs' records — never the manifests
    alone. A data dir whose records cannot be read (damage is a reason to restore), or none
    with records at all (lost, or not where the manifest says), is refused unless the user
    gave the whole cluster (``cluster_given``): then it is a warning."""
    from .datadir import recorded_members
    from .grpc import member_list

    for m in members:
        try:
            listed = await member_list(m.endpoint)
        except EtcdError:
            continue
        return [Known(x.name, x.peer_urls) for x in listed]
    from_manifests = [
        k
        for m in members
        for k in parse_initial_cluster(m.initial_cluster, what=f"{m.manifest}: --initial-cluster")
    ]
    from_dirs: list[Known] = []
    read: list[Path] = []
    for m in members:
        try:
            recorded = recorded_members(m.data_dir)
        except EtcdError as e:
            if not cluster_given:
                raise UsageError(
                    f"{e}; without it the members are not known: give the whole cluster with "
                    "--initial-cluster NAME=PEER-URL,... and --initial-cluster-token TOKEN"
                ) from None
            say(f"warning: {e}; going by --initial-cluster")
            continue
        if recorded is not None:
            read.append(m.data_dir)
            from_dirs += [Known(r.name, r.peer_urls) for r in recorded]
    if not read and not cluster_given:
        # Only the manifests are left, and kubeadm's first control plane names itself alone:
        # restoring by them could restore one member of three.
        raise UsageError(
            "etcd does not answer and no old data dir here records its members ("
            + ", ".join(f"{m.name}: {m.data_dir}" for m in members)
            + " holds no etcd backend); the manifests alone cannot say who the members are: "
            "give the whole cluster with --initial-cluster NAME=PEER-URL,... and "
            "--initial-cluster-token TOKEN"
        )
    source = "the manifests' --initial-cluster" + (
        f" and the membership recorded in {', '.join(map(str, read))}" if read else ""
    )
    say(f"etcd does not answer: its members are taken from {source}")
    return union(from_manifests, from_dirs)
