"""fleet upgrade's pure parts: waves over the chosen clusters, the gate's verdict, the record,
and the order of the run (each cluster's steps replaced: the real ones run in the e2e test)."""

from __future__ import annotations

import asyncio
from pathlib import Path
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
    "flag", ["--to", "--yes", "-o", "-ojson", "--journal=j", "--context", "--kubeconfig",
             "--cont", "--kubec=/tmp/k", "--jour", "--outp"],
)  # fmt: skip
def test_flags_the_fleet_sets_itself_are_refused_abbreviated_too(flag: str) -> None:
    with pytest.raises(UsageError, match="fleet upgrade sets --to"):
        fu.check_upgrade_args([flag, "x"], "the flags after --", shared=False)


@pytest.mark.parametrize("flag", ["--sandbox", "--sand", "--etcd-endpoints=x", "--etcd-key"])
def test_flags_aiming_at_one_place_are_a_clusters_own_never_shared(flag: str) -> None:
    with pytest.raises(UsageError, match="in each cluster's own `upgrade:` list"):
        fu.check_upgrade_args([flag, "x"], "the flags after --", shared=True)
    fu.check_upgrade_args([flag, "x"], "the fleet file's upgrade flags of a", shared=False)


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
    rolled = pod("coredns-7d9-x", owner="coredns-7d9")
    rolled["metadata"]["labels"] = {"pod-template-hash": "7d9"}
    assert workload(rolled) == "ns/Deployment/coredns"  # a new ReplicaSet is the same workload
    mirror = pod("kube-apiserver-cp1")
    mirror["metadata"]["ownerReferences"] = [{"kind": "Node", "name": "cp1", "controller": True}]
    assert workload(mirror) == "ns/Pod/kube-apiserver-cp1"  # not every static pod of the node


def test_the_gate_command_talks_to_its_cluster_and_says_why_it_failed(tmp_path: Path) -> None:
    from kubecare.fleet.gate import GateCommand, run_gate

    c = FleetCluster("edge", "ctx-edge", str(tmp_path / "kc.yaml"))
    out = tmp_path / "env"
    ok = asyncio.run(run_gate(GateCommand(
        f'cat "${{KUBECONFIG%%:*}}" > {out}; echo >> {out}; echo "$KUBECONFIG $KUBECARE_CONTEXT '
        f'$KUBECARE_CLUSTER" >> {out}'), c))  # fmt: skip
    first, env = out.read_text().splitlines()
    assert ok == "" and '"current-context": "ctx-edge"' in first
    assert env.endswith(f":{tmp_path / 'kc.yaml'} ctx-edge edge")
    failed = asyncio.run(run_gate(GateCommand("echo one; echo two >&2; exit 4"), c))
    assert failed == "the gate command exited 4: two"
    slow = asyncio.run(run_gate(GateCommand("sleep 5", timeout=0.2), c))
    assert slow == "the gate command did not finish within 0s"


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

        self.looks: list[str] = []

        async def run_one(c: FleetCluster, argv: list[str], on_line: Any, **_: Any) -> RunResult:
            self.ran.append(c.name)
            await asyncio.sleep(0)
            code = self.codes.get(c.name, 0)
            return RunResult(c.name, code, 0.1, "" if code == 0 else f"{c.name} broke")

        async def health(c: FleetCluster, baseline: list[str], gate: Any) -> list[str]:
            self.looks.append(c.name)
            # healthy before its upgrade; after it, as told
            return (
                [self.unhealthy[c.name]] if c.name in self.unhealthy and c.name in self.ran else []
            )

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


def test_after_a_failure_no_waiting_cluster_of_the_wave_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = Steps(set(), {"a": 1}, {})
    steps.install(monkeypatch)
    f = fleet("a", "b", "c")
    result = asyncio.run(fu.apply_fleet(f.clusters, fu.fleet_waves(f, None), "v1.37.2",
                                        parallel=1, on_line=lambda *_: None,
                                        on_event=lambda *_: None))  # fmt: skip
    assert steps.ran == ["a"]
    assert [c.error for c in result.clusters] == ["a broke"] + [
        "not run: another cluster of its wave failed"] * 2  # fmt: skip


def test_a_cluster_unhealthy_before_its_upgrade_is_not_touched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = Steps(set(), {}, {})
    steps.install(monkeypatch)

    async def health(c: FleetCluster, baseline: list[str], gate: Any) -> list[str]:
        return ["node n1 is not Ready (Ready=False)"]

    monkeypatch.setattr(fu, "_health", health)
    result = run(fleet("a", "b"), "canary=a,rest=b")
    assert steps.ran == [] and not result.ok
    assert result.clusters[0].error == (
        "not healthy before its upgrade: node n1 is not Ready (Ready=False)"
    )


def test_a_stopped_child_gets_one_sigint_to_stop_as_on_ctrl_c(tmp_path: Path) -> None:
    import sys

    from kubecare.fleet.runner import _stop

    seen = tmp_path / "seen"
    code = (
        "import signal, sys, time\n"
        f"def stop(*_):\n    open({str(seen)!r}, 'a').write('int ')\n    sys.exit(3)\n"
        "signal.signal(signal.SIGINT, stop)\nprint('ready', flush=True)\ntime.sleep(30)\n"
    )

    async def main() -> int | None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        assert proc.stdout is not None
        await proc.stdout.readline()
        await _stop(proc)
        return proc.returncode

    assert asyncio.run(main()) == 3
    assert seen.read_text() == "int "


def test_a_child_still_running_at_exit_is_stopped(tmp_path: Path) -> None:
    """A second Ctrl-C ends the loop with the children's stops pending: the exit hook stops
    each child left (they are in their own sessions, so no terminal signal reaches them)."""
    import subprocess
    import sys

    from kubecare.fleet import runner

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             start_new_session=True)  # fmt: skip
    runner._LIVE.add(child.pid)
    runner._stop_left()
    assert child.wait(10) == -15 and not runner._LIVE
