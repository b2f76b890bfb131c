"""fleet upgrade's pure parts: waves over the chosen clusters, the gate's verdict, the record,
and the order of the run (each cluster's steps replaced: the real ones run in the e2e test)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubecare.errors import UsageError
from kubecare.fleet import upgrade as fu
from kubecare.fleet.fleetfile import Fleet, FleetCluster, FleetFileError, parse_fleet
from kubecare.fleet.gate import crash_looping, judge, workload
from kubecare.fleet.runner import RunResult


def fleet(*names: str, waves: list[dict[str, Any]] | None = None) -> Fleet:
    doc: dict[str, Any] = {"clusters": [{"context": n} for n in names]}
    if waves:
        doc["waves"] = waves
    return parse_fleet(doc, "f.yaml")


def test_without_waves_every_chosen_cluster_is_one_wave() -> None:
    assert fu.fleet_waves(fleet("a", "b"), None) == [fu.Wave("all", ("a", "b"))]


def test_the_flag_orders_waves_and_a_cluster_in_none_is_refused() -> None:
    f = fleet("dev-1", "dev-2", "prod")
    waves = fu.fleet_waves(f, "canary=dev-1,rest=*")
    assert [(w.name, w.clusters) for w in waves] == [("canary", ("dev-1",)),
                                                     ("rest", ("dev-2", "prod"))]  # fmt: skip
    with pytest.raises(UsageError, match="cluster prod is in no wave"):
        fu.fleet_waves(f, "canary=dev-*")


def test_the_files_waves_are_narrowed_to_the_selection() -> None:
    f = fleet("a", "b", "c", waves=[{"name": "one", "clusters": ["a"]},
                                    {"name": "two", "clusters": ["b", "c"]}])  # fmt: skip
    waves = fu.fleet_waves(f.named(["b"]), None)
    assert [(w.name, w.clusters) for w in waves] == [("two", ("b",))]


def test_a_clusters_own_upgrade_flags_are_read_from_the_fleet_file() -> None:
    f = parse_fleet(
        {"clusters": [{"context": "a", "upgrade": ["--executor", "sandbox", "--sandbox", "a"]}]},
        "f.yaml",
    )
    c = f.clusters[0]
    assert c.upgrade_args == ("--executor", "sandbox", "--sandbox", "a")
    argv = fu.apply_argv("v1.37.2", ["--ignore-daemonsets"], c)
    assert argv == ["upgrade", "apply", "--to", "v1.37.2", "--yes", "-o", "json",
                    "--ignore-daemonsets", "--executor", "sandbox", "--sandbox", "a"]  # fmt: skip
    with pytest.raises(FleetFileError, match=r"clusters\[0\]\.upgrade must be a list"):
        parse_fleet({"clusters": [{"context": "a", "upgrade": "--executor ssh"}]}, "f.yaml")


@pytest.mark.parametrize(
    "flag", ["--to", "--yes", "-o", "--journal=j", "--context", "--kubeconfig"]
)
def test_flags_the_fleet_sets_itself_are_refused(flag: str) -> None:
    with pytest.raises(UsageError, match="fleet upgrade sets --to"):
        fu.check_upgrade_args([flag, "x"], "the flags after --")


def pod(name: str, *, owner: str | None = None, waiting: str | None = None,
        init: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "controller": True}]
    cs = [{"name": "c", "state": {"waiting": {"reason": waiting}} if waiting else {"running": {}}}]
    status = {"initContainerStatuses" if init else "containerStatuses": cs}
    return {"metadata": meta, "status": status}


def node(name: str, ready: str | None = "True") -> dict[str, Any]:
    conds = [{"type": "Ready", "status": ready}] if ready else []
    return {"metadata": {"name": name}, "status": {"conditions": conds}}


def test_a_workload_is_its_controller_or_the_bare_pod() -> None:
    assert workload(pod("web-1", owner="web-abc")) == "ns/ReplicaSet/web-abc"
    assert workload(pod("bare")) == "ns/Pod/bare"


def test_crash_looping_is_kubelets_back_off_in_any_container() -> None:
    pods = [pod("a", owner="rs-a", waiting="CrashLoopBackOff"),
            pod("b", waiting="CrashLoopBackOff", init=True),
            pod("c", waiting="ContainerCreating"), pod("d")]  # fmt: skip
    assert crash_looping(pods) == {"ns/ReplicaSet/rs-a", "ns/Pod/b"}


def test_the_gate_names_nodes_not_ready_and_only_new_crash_loops() -> None:
    nodes = [node("n1"), node("n2", "False"), node("n3", None)]
    pods = [pod("old", owner="rs-old", waiting="CrashLoopBackOff"),
            pod("new", owner="rs-new", waiting="CrashLoopBackOff")]  # fmt: skip
    assert judge(nodes, pods, ["ns/ReplicaSet/rs-old"]) == [
        "node n2 is not Ready (Ready=False)",
        "node n3 is not Ready (Ready=Unknown)",
        "crash-looping since the upgrade: ns/ReplicaSet/rs-new",
    ]
    assert judge([node("n1")], pods[:1], ["ns/ReplicaSet/rs-old"]) == []


def test_a_record_round_trips_and_an_unreadable_one_is_absent() -> None:
    rec = fu.FleetRecord("v1.37.2", "canary", ["ns/Pod/x"], "passed", "2026-12-08T00:00:00Z")
    assert fu.FleetRecord.from_json(rec.to_json()) == rec
    assert fu.FleetRecord.from_json("{not json") is None
    assert fu.FleetRecord.from_json('{"wave": "x"}') is None


class Steps:
    """Each cluster's steps, recorded: prepare (done or not), the run's exit, health."""

    def __init__(self, done: set[str], codes: dict[str, int], unhealthy: dict[str, str]):
        self.done, self.codes, self.unhealthy = done, codes, unhealthy
        self.ran: list[str] = []
        self.gates: dict[str, str] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def prepare(c: FleetCluster, target: str, wave: str) -> tuple[bool, Any]:
            return c.name in self.done, fu.FleetRecord(target, wave)

        async def run_one(c: FleetCluster, argv: list[str], on_line: Any, **_: Any) -> RunResult:
            self.ran.append(c.name)
            await asyncio.sleep(0)
            code = self.codes.get(c.name, 0)
            return RunResult(c.name, code, 0.1, "" if code == 0 else f"{c.name} broke")

        async def health(c: FleetCluster, baseline: list[str], gate: Any) -> list[str]:
            return [self.unhealthy[c.name]] if c.name in self.unhealthy else []

        async def set_gate(c: FleetCluster, verdict: str) -> None:
            self.gates[c.name] = verdict

        monkeypatch.setattr(fu, "_prepare", prepare)
        monkeypatch.setattr(fu, "run_one", run_one)
        monkeypatch.setattr(fu, "_health", health)
        monkeypatch.setattr(fu, "_set_gate", set_gate)


def run(f: Fleet, waves: str) -> fu.FleetUpgradeResult:
    return asyncio.run(
        fu.apply_fleet(
            f.clusters,
            fu.fleet_waves(f, waves),
            "v1.37.2",
            on_line=lambda *_: None,
            on_event=lambda *_: None,
        )
    )


def test_an_unhealthy_canary_stops_the_next_wave(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = Steps(set(), {}, {"a": "node n1 is not Ready (Ready=Unknown)"})
    steps.install(monkeypatch)
    result = run(fleet("a", "b", "c"), "canary=a,rest=*")
    assert steps.ran == ["a"] and not result.ok
    assert [(w.name, w.state) for w in result.waves] == [("canary", "failed"), ("rest", "not run")]
    assert result.waves[0].reason == "a: node n1 is not Ready (Ready=Unknown)"
    by = {c.cluster: c for c in result.clusters}
    assert by["a"].state == fu.UNHEALTHY and by["b"].error == "not run: wave canary failed"
    assert steps.gates == {"a": "failed: node n1 is not Ready (Ready=Unknown)"}


def test_a_rerun_gates_the_done_canary_again_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = Steps({"a"}, {}, {})
    steps.install(monkeypatch)
    result = run(fleet("a", "b", "c"), "canary=a,rest=*")
    assert result.ok and steps.ran == ["b", "c"]
    assert [c.state for c in result.clusters] == [fu.ALREADY, fu.UPGRADED, fu.UPGRADED]
    assert steps.gates == {"a": "passed", "b": "passed", "c": "passed"}


def test_a_failed_upgrade_stops_before_its_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = Steps(set(), {"b": 1}, {})
    steps.install(monkeypatch)
    result = run(fleet("a", "b", "c"), "one=a+b,two=c")
    assert sorted(steps.ran) == ["a", "b"] and steps.gates == {}  # the wave finished, no gate
    assert result.waves[0].state == "failed" and result.waves[0].reason == "b: b broke"
    assert [c.state for c in result.clusters] == [fu.UPGRADED, fu.FAILED, fu.NOT_RUN]
