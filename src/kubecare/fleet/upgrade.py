"""``fleet upgrade``: one Kubernetes minor across a fleet, wave by wave, gated.

Each cluster is upgraded by the single-cluster ``kubecare upgrade apply`` in a child process
(its own journal in its own ``kube-system/kubecare-upgrade``, its own executor flags from the
fleet file), so a fleet run is exactly the runs an operator would make by hand, in order. A wave
starts only when every wave before it has passed its gate: each of its clusters upgraded, then
healthy for the whole soak (:mod:`kubecare.fleet.gate`).

What the fleet itself must remember lives with each cluster too, in the ConfigMap
``kube-system/kubecare-fleet-upgrade``: the target, the wave, the workloads that were already
crash-looping before the cluster's upgrade (the gate's baseline, so that a rerun judges against
the cluster as it was before, not as the failed upgrade left it) and the last gate's verdict.
A rerun therefore resumes: a cluster whose journal says it is done at the target is not run
again, only gated again; an unfinished one resumes its own journal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import Conflict, KubecareError, NotFound, UsageError
from .fleetfile import Fleet, FleetCluster, Wave, waves_flag
from .gate import GateCommand, crash_looping, judge, run_gate
from .runner import OnLine, run_one
from .status import client_options

if TYPE_CHECKING:
    from ..kube import Kube
    from ..upgrade.journal import Journal

RECORD_NAME = "kubecare-fleet-upgrade"
RECORD_NAMESPACE = "kube-system"
RECORD_KEY = "record.json"
CLIENT_TIMEOUT = 30.0

#: Flags ``fleet upgrade apply`` sets itself, or that would make every cluster's run the same.
OWN_FLAGS = ("--to", "--yes", "--output", "--journal", "--context", "--kubeconfig")
#: Flags that aim a run at one place: a cluster's own (its ``upgrade:`` list), never shared.
PER_CLUSTER_FLAGS = ("--sandbox", "--etcd-endpoints", "--etcd-cacert", "--etcd-cert",
                     "--etcd-key")  # fmt: skip

OnEvent = Callable[[str, str], None]  # (cluster or wave, message)


# -- the waves ---------------------------------------------------------------------------------
def fleet_waves(fleet: Fleet, waves_text: str | None) -> list[Wave]:
    """The waves over the chosen clusters: ``--waves``, else the fleet file's (each narrowed to
    the chosen clusters, empty ones dropped), else one wave of them all. A chosen cluster in no
    wave is an error: it would silently never be upgraded."""
    names = [c.name for c in fleet.clusters]
    if not names:
        raise UsageError("no cluster chosen")
    if waves_text:
        waves = waves_flag(waves_text, list(fleet.clusters))
    elif fleet.waves:
        chosen = set(names)
        waves = [
            Wave(w.name, tuple(n for n in w.clusters if n in chosen), w.after)
            for w in fleet.waves
            if any(n in chosen for n in w.clusters)
        ]
    else:
        return [Wave("all", tuple(names))]
    placed = {n for w in waves for n in w.clusters}
    missing = [n for n in names if n not in placed]
    if missing:
        raise UsageError(
            f"cluster {missing[0]} is in no wave; add it to a wave (a last wave of `*` takes "
            "the rest) or leave it out of the selection"
        )
    return waves


def _long(flag: str, known: Sequence[str]) -> str | None:
    """The flag of ``known`` that ``flag`` names, abbreviations included (argparse takes an
    unambiguous prefix of a long flag as that flag)."""
    if flag in known:
        return flag
    if flag.startswith("--") and len(flag) > 2:
        return next((k for k in known if k.startswith(flag)), None)
    return None


def check_upgrade_args(args: Sequence[str], where: str, *, shared: bool) -> None:
    """Refuse what the fleet sets itself, and (in the flags every cluster gets) what would aim
    every cluster's run at one place."""
    for a in args:
        if not a.startswith("-"):
            continue
        flag = a.split("=", 1)[0]
        own = "-o" if flag == "-o" or (flag.startswith("-o") and not flag.startswith("--")) \
            else _long(flag, OWN_FLAGS)  # fmt: skip
        if own:
            raise UsageError(
                f"{flag} in {where}: fleet upgrade sets --to, --yes and -o itself, gives each "
                "cluster its own --kubeconfig and --context, and reads each cluster's journal "
                "from its ConfigMap"
            )
        target = _long(flag, PER_CLUSTER_FLAGS) if shared else None
        if target:
            raise UsageError(
                f"{target} in {where} would aim every cluster's run at the same place; give "
                "it in each cluster's own `upgrade:` list of the fleet file"
            )


def apply_argv(target: str, common: Sequence[str], cluster: FleetCluster) -> list[str]:
    return [
        "upgrade", "apply", "--to", target, "--yes", "-o", "json",
        *common, *cluster.upgrade_args,
    ]  # fmt: skip


# -- the record each cluster keeps ---------------------------------------------------------------
@dataclass
class FleetRecord:
    target: str
    wave: str
    baseline: list[str] = field(default_factory=list)  # workloads crash-looping before
    gate: str = ""  # "" (not gated yet) | "passed" | "failed: <reason>"
    updated: str = ""

    def to_json(self) -> str:
        return orjson.dumps(self.__dict__).decode()

    @classmethod
    def from_json(cls, text: str) -> FleetRecord | None:
        try:
            raw = orjson.loads(text)
            rec = cls(
                str(raw["target"]),
                str(raw["wave"]),
                [str(x) for x in raw.get("baseline") or []],
                str(raw.get("gate") or ""),
                str(raw.get("updated") or ""),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None  # unreadable: taken as absent, and rewritten from the cluster now
        return rec


_RECORD_PATH = f"/api/v1/namespaces/{RECORD_NAMESPACE}/configmaps/{RECORD_NAME}"


async def load_record(kube: Kube) -> tuple[FleetRecord | None, str]:
    """The cluster's record and its resourceVersion ("" when there is none)."""
    try:
        cm = await kube.get_json(_RECORD_PATH)
    except NotFound:
        return None, ""
    rec = FleetRecord.from_json(str((cm.get("data") or {}).get(RECORD_KEY, "")))
    return rec, str(cm["metadata"].get("resourceVersion", ""))


async def save_record(kube: Kube, record: FleetRecord, resource_version: str) -> str:
    """Create or replace the record (replaced at its resourceVersion: two fleet runs on one
    cluster get a conflict instead of overwriting each other)."""
    from ..upgrade.journal import now

    record.updated = now()
    meta: dict[str, Any] = {"name": RECORD_NAME, "namespace": RECORD_NAMESPACE,
                            "labels": {"app.kubernetes.io/managed-by": "kubecare"}}  # fmt: skip
    if resource_version:
        meta["resourceVersion"] = resource_version
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "data": {RECORD_KEY: record.to_json()}}  # fmt: skip
    try:
        if resource_version:
            out = await kube.request_json("PUT", _RECORD_PATH, body=body)
        else:
            out = await kube.request_json(
                "POST", f"/api/v1/namespaces/{RECORD_NAMESPACE}/configmaps", body=body
            )
    except Conflict:
        raise Conflict(
            f"{RECORD_NAMESPACE}/{RECORD_NAME} was changed by someone else (another fleet "
            "upgrade?); run again when it has finished",
            status=409,
        ) from None
    return str(out["metadata"].get("resourceVersion", ""))


# -- outcomes ----------------------------------------------------------------------------------
UPGRADED, ALREADY, FAILED, UNHEALTHY, NOT_RUN = (
    "upgraded", "already at the target", "failed", "unhealthy", "not run",
)  # fmt: skip


@dataclass
class ClusterOutcome:
    cluster: str
    wave: str
    state: str = NOT_RUN
    code: int | None = None
    seconds: float = 0.0
    error: str = ""
    gate: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "context": self.cluster, "wave": self.wave, "state": self.state,
            "exitCode": self.code, "seconds": round(self.seconds, 1),
            "error": self.error or None, "gate": self.gate or None,
        }  # fmt: skip


@dataclass
class WaveOutcome:
    name: str
    clusters: tuple[str, ...]
    state: str = NOT_RUN  # passed | failed | not run
    reason: str = ""


@dataclass
class FleetUpgradeResult:
    target: str
    waves: list[WaveOutcome]
    clusters: list[ClusterOutcome]

    @property
    def ok(self) -> bool:
        return all(w.state == "passed" for w in self.waves)


@dataclass(frozen=True)
class GateOptions:
    soak: float = 0.0  # seconds every cluster of a wave must stay healthy
    interval: float = 10.0  # between two looks during the soak
    command: GateCommand | None = None


# -- one cluster's steps -----------------------------------------------------------------------
def _kube(cluster: FleetCluster) -> Kube:
    from ..kube import Kube

    return Kube(client_options(cluster, timeout=CLIENT_TIMEOUT))


async def _prepare(cluster: FleetCluster, target: str, wave: str) -> tuple[bool, FleetRecord]:
    """Whether the cluster is done at ``target`` (its journal done, every kubelet there); its
    record, written now with the baseline on the first run of this upgrade on it. An unfinished
    upgrade to another version is refused before anything is written."""
    from ..upgrade.journal import ConfigMapStore

    async with _kube(cluster) as kube:
        journal: Journal | None = await ConfigMapStore(kube).load()
        if journal is not None and journal.state != "done" and journal.target != target:
            raise UsageError(
                f"an upgrade to {journal.target} is unfinished ({journal.state}); finish it "
                f"with --to {journal.target}, or forget it with kubecare upgrade reset --yes"
            )
        record, rv = await load_record(kube)
        if record is None or record.target != target:
            # before this upgrade touches the cluster, or (an unfinished journal at this
            # target, the record lost) as near to that as can be had now
            pods = await kube.list_objects("/api/v1/pods")
            record = FleetRecord(target, wave, sorted(crash_looping(pods)))
            await save_record(kube, record, rv)
        elif record.wave != wave:  # moved to another wave by the fleet file: keep the baseline
            record.wave = wave
            await save_record(kube, record, rv)
        done = journal is not None and journal.state == "done" and journal.target == target
        if done:  # a node joined at an old version since is still to do
            nodes = await kube.list_objects("/api/v1/nodes")
            done = all(
                ((n.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion") == target
                for n in nodes
            )
    return done, record


async def _health(cluster: FleetCluster, baseline: list[str], gate: GateOptions) -> list[str]:
    try:
        async with _kube(cluster) as kube:
            nodes, pods = await asyncio.gather(
                kube.list_objects("/api/v1/nodes"), kube.list_objects("/api/v1/pods")
            )
        reasons = judge(nodes, pods, baseline)
        if not reasons and gate.command is not None:
            failed = await run_gate(gate.command, cluster)
            if failed:
                reasons.append(failed)
    except KubecareError as e:
        return [f"could not be read: {e.message}"]
    except Exception as e:  # a defect with this cluster: its verdict, not every cluster's
        return [f"kubecare failed unexpectedly ({type(e).__name__}: {e}); please report it"]
    return reasons


async def _set_gate(cluster: FleetCluster, verdict: str) -> None:
    try:
        async with _kube(cluster) as kube:
            record, rv = await load_record(kube)
            if record is not None:
                record.gate = verdict
                await save_record(kube, record, rv)
    except KubecareError:
        pass  # the verdict is also in the result; a cluster that cannot be written says so there


async def _upgrade_one(
    c: FleetCluster,
    o: ClusterOutcome,
    target: str,
    common_args: Sequence[str],
    slots: asyncio.Semaphore,
    failed: asyncio.Event,
    records: dict[str, FleetRecord],
    gate: GateOptions,
    on_line: OnLine,
    on_event: OnEvent,
) -> None:
    """The cluster's record (and baseline), a look at its health, then its `upgrade apply`
    unless it is done at the target; the outcome in ``o``. Once a cluster of the wave has
    failed, none that has not started yet starts."""
    async with slots:
        if failed.is_set():
            o.error = "not run: another cluster of its wave failed"
            return
        t0 = time.monotonic()
        try:
            done, records[c.name] = await _prepare(c, target, o.wave)
            if done:
                o.state, o.code = ALREADY, 0
                on_event(c.name, f"already upgraded to {target} (its journal is done)")
                return
            # not healthy before its upgrade (or the gate itself broken): nothing is touched
            before = await _health(c, records[c.name].baseline, gate)
            if before:
                o.state, o.error = FAILED, f"not healthy before its upgrade: {before[0]}"
                failed.set()
                return
            res = await run_one(c, apply_argv(target, common_args, c), on_line, keep_stdout=True)
        except KubecareError as e:
            o.state, o.error = FAILED, e.message
        except Exception as e:  # a defect with this cluster: its row, the others go on
            o.state = FAILED
            o.error = f"kubecare failed unexpectedly ({type(e).__name__}: {e}); please report it"
        else:
            o.code = res.code
            o.state = UPGRADED if res.ok else FAILED
            o.error = res.error
        o.seconds = time.monotonic() - t0
        if o.state == FAILED:
            failed.set()


# -- the run -----------------------------------------------------------------------------------
async def apply_fleet(
    clusters: Sequence[FleetCluster],
    waves: Sequence[Wave],
    target: str,
    *,
    common_args: Sequence[str] = (),
    parallel: int = 5,
    gate: GateOptions = GateOptions(),
    on_line: OnLine,
    on_event: OnEvent,
) -> FleetUpgradeResult:
    """Upgrade wave by wave; the first wave that fails (a cluster's upgrade, or its gate) stops
    every wave after it."""
    by_name = {c.name: c for c in clusters}
    result = FleetUpgradeResult(
        target,
        [WaveOutcome(w.name, w.clusters) for w in waves],
        [ClusterOutcome(n, w.name) for w in waves for n in w.clusters],
    )
    outcome = {o.cluster: o for o in result.clusters}
    for wave in result.waves:
        on_event(wave.name, f"wave {wave.name}: {', '.join(wave.clusters)}")
        slots = asyncio.Semaphore(max(1, parallel))
        stop = asyncio.Event()
        records: dict[str, FleetRecord] = {}
        await asyncio.gather(
            *(_upgrade_one(by_name[n], outcome[n], target, common_args, slots, stop, records,
                           gate, on_line, on_event) for n in wave.clusters)
        )  # fmt: skip
        failed = [outcome[n] for n in wave.clusters if outcome[n].state == FAILED]
        if failed:
            wave.state = "failed"
            wave.reason = "; ".join(f"{o.cluster}: {o.error or 'failed'}" for o in failed)
            break
        verdict = await _soak(wave, by_name, records, gate, on_event)
        bad = {n: v for n, v in verdict.items() if v}
        await asyncio.gather(
            *(_set_gate(by_name[n], f"failed: {bad[n]}" if n in bad else "passed")
              for n in wave.clusters)
        )  # fmt: skip
        if bad:
            for n in wave.clusters:
                outcome[n].gate = f"failed: {bad[n]}" if n in bad else "passed"
                if n in bad:
                    outcome[n].state = UNHEALTHY
            wave.state = "failed"
            wave.reason = "; ".join(f"{n}: {v}" for n, v in bad.items())
            break
        for n in wave.clusters:
            outcome[n].gate = "passed"
        wave.state = "passed"
        on_event(wave.name, f"wave {wave.name} passed its gate")
    stopped = next((w for w in result.waves if w.state == "failed"), None)
    if stopped is not None:
        for w in result.waves:
            if w.state == NOT_RUN:
                w.reason = f"wave {stopped.name} failed"
                for n in w.clusters:
                    outcome[n].error = f"not run: wave {stopped.name} failed"
    return result


async def _soak(
    wave: WaveOutcome,
    by_name: dict[str, FleetCluster],
    records: dict[str, FleetRecord],
    gate: GateOptions,
    on_event: OnEvent,
) -> dict[str, str]:
    """{cluster: the first reason it was unhealthy} over the soak; empty: every cluster of the
    wave stayed healthy for all of it (with no soak: at one look)."""
    deadline = time.monotonic() + gate.soak
    if gate.soak:
        on_event(wave.name, f"wave {wave.name}: soaking for {gate.soak:.0f}s")
    while True:
        looks = await asyncio.gather(
            *(_health(by_name[n], records[n].baseline, gate) for n in wave.clusters)
        )
        bad = {n: r[0] for n, r in zip(wave.clusters, looks, strict=True) if r}
        if bad:
            return bad
        left = deadline - time.monotonic()
        if left <= 0:
            return {}
        await asyncio.sleep(min(gate.interval, left))


# -- plan and status -----------------------------------------------------------------------------
@dataclass
class ClusterPlan:
    cluster: str
    wave: str
    current: str = ""
    target: str = ""
    pending: int = 0
    go: bool = False
    reasons: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "context": self.cluster, "wave": self.wave, "current": self.current or None,
            "target": self.target or None, "pendingNodes": self.pending, "go": self.go,
            "reasons": self.reasons, "error": self.error or None,
        }  # fmt: skip


async def _plan_one(
    cluster: FleetCluster, wave: str, target: Any, drain: Any, options: dict[str, Any]
) -> ClusterPlan:
    from ..upgrade.preflight import plan_with_preflight

    row = ClusterPlan(cluster.name, wave)
    try:
        async with _kube(cluster) as kube:
            plan, _, _ = await plan_with_preflight(kube, target, drain, **options)
    except KubecareError as e:
        row.error = e.message
        return row
    row.current, row.target, row.pending = plan.current, plan.target, len(plan.pending)
    row.go, row.reasons = plan.go, list(plan.reasons)
    return row


async def plan_fleet(
    clusters: Sequence[FleetCluster],
    waves: Sequence[Wave],
    target: Any,
    inputs: dict[str, tuple[Any, dict[str, Any]]],
) -> list[ClusterPlan]:
    """Each cluster planned as its ``upgrade apply`` will plan it (``inputs``: its drain
    options and :func:`plan_with_preflight`'s keywords, from its flags), all at once, in wave
    order."""
    by_name = {c.name: c for c in clusters}
    return list(
        await asyncio.gather(
            *(_plan_one(by_name[n], w.name, target, *inputs[n]) for w in waves for n in w.clusters)
        )
    )


@dataclass
class ClusterUpgradeStatus:
    cluster: str
    wave: str
    journal: dict[str, Any] | None = None
    record: FleetRecord | None = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "context": self.cluster, "wave": self.wave, "journal": self.journal,
            "fleet": self.record.__dict__ if self.record else None, "error": self.error or None,
        }  # fmt: skip


async def _status_one(cluster: FleetCluster, wave: str) -> ClusterUpgradeStatus:
    from ..upgrade.journal import ConfigMapStore

    row = ClusterUpgradeStatus(cluster.name, wave)
    try:
        async with _kube(cluster) as kube:
            journal = await ConfigMapStore(kube).load()
            row.record, _ = await load_record(kube)
    except KubecareError as e:
        row.error = e.message
        return row
    row.journal = orjson.loads(journal.to_json()) if journal is not None else None
    return row


async def status_fleet(
    clusters: Sequence[FleetCluster], waves: Sequence[Wave]
) -> list[ClusterUpgradeStatus]:
    by_name = {c.name: c for c in clusters}
    return list(
        await asyncio.gather(*(_status_one(by_name[n], w.name) for w in waves for n in w.clusters))
    )
