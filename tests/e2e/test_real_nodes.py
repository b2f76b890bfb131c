"""Real nodes: a real kubelet and containerd, joined by the real kubeadm, running real containers.

One sandbox for the module (one control plane, one kwok worker for CoreDNS, two real nodes);
the test of `sandbox down`'s cleanup makes its own. A real node's upgrade (the real `kubeadm
upgrade node`, the kubelet package swapped and restarted) is tested as the canary of the fleet
upgrade in test_upgrade.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubecare.backup.volumes import HELPER_LABEL, HOOK_PREFIX
from kubecare.errors import NotFound
from kubecare.kube import ClientOptions, Kube
from kubecare.nodes.cordon import set_unschedulable
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION
from kubecare.sandbox.images import HTTP, TOOLS
from kubecare.sandbox.localpath import CLASS as LOCAL_CLASS
from kubecare.sandbox.realnode import TAINT, TOLERATION

from .conftest import own_sandbox, run_cli
from .workloads import apply, deployment, is_ready, pdb, pods, statefulset, wait_for

pytestmark = pytest.mark.e2e

REAL = ("real-1", "real-2")
VOLUME_HOOKS = HOOK_PREFIX
VOLUME_HELPER = HELPER_LABEL
OPT_BEFORE = sorted(p.name for p in Path("/opt").iterdir())  # before any real node of the module


@pytest.fixture(scope="module")
async def rsb(sandbox_state_dir: Path) -> AsyncIterator[Sandbox]:
    opts = SandboxOptions(workers=1, real_nodes=2, node_monitor_grace_period=10)
    async with own_sandbox("real", opts) as sb:
        yield sb


@pytest.fixture
async def rkube(rsb: Sandbox) -> AsyncIterator[Kube]:
    async with Kube(ClientOptions(kubeconfig=str(rsb.kubeconfig))) as k:
        yield k


async def new_namespace(kube: Kube) -> str:
    """A fresh namespace, once its default ServiceAccount exists (pods need it)."""
    name = f"real-{uuid.uuid4().hex[:6]}"
    await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})

    async def account() -> bool:
        path = f"/api/v1/namespaces/{name}/serviceaccounts/default"
        return (await kube.http.get(path)).status_code == 200

    await wait_for(account, timeout=60)
    return name


@pytest.fixture
async def ns(rkube: Kube) -> AsyncIterator[str]:
    name = await new_namespace(rkube)
    yield name
    await rkube.http.delete(f"/api/v1/namespaces/{name}")


def web(name: str, replicas: int, node: str | None, *, term_delay: float = 0) -> dict:
    """The http image behind a real readiness probe; SIGTERM takes ``term_delay`` seconds."""
    spec: dict = {
        "tolerations": [TOLERATION],
        "terminationGracePeriodSeconds": 20,
        "containers": [
            {
                "name": "web",
                "image": HTTP,
                "imagePullPolicy": "IfNotPresent",
                "env": [{"name": "TERM_DELAY", "value": str(term_delay)}],
                "readinessProbe": {
                    "httpGet": {"path": "/ready", "port": 8080},
                    "periodSeconds": 1,
                },
            }
        ],
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    else:  # only the real nodes can run this image
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": list(REAL)}]}]}}}  # fmt: skip
    return deployment(name, replicas, spec)


async def ready_on(kube: Kube, ns: str, node: str | None = None) -> list[dict]:
    return [
        p
        for p in await pods(kube, ns)
        if is_ready(p)
        and not p["metadata"].get("deletionTimestamp")
        and (node is None or p["spec"].get("nodeName") == node)
    ]


async def node(kube: Kube, name: str) -> dict:
    return await kube.get_json(f"/api/v1/nodes/{name}")


async def node_ready(kube: Kube, name: str, timeout: float = 60) -> None:
    """Wait for the node's Ready condition; a node that never gets there fails the test with
    its conditions (a full CI run once saw a worker NotReady for a moment mid-test)."""
    last: list = []

    async def ready() -> bool:
        last[:] = (await node(kube, name))["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in last)

    try:
        await wait_for(ready, timeout=timeout)
    except Exception as e:
        raise AssertionError(f"node {name} not Ready: {last}") from e


async def test_real_nodes_are_kubeadm_workers_with_their_own_kubelet(
    rsb: Sandbox, rkube: Kube
) -> None:
    boots = set()
    for i, name in enumerate(REAL):
        obj = await node(rkube, name)
        info = obj["status"]["nodeInfo"]
        # the real kubelet and containerd report themselves (kwok's workers say what they're told)
        assert info["kubeletVersion"] == f"v{DEFAULT_KUBE_VERSION}"
        assert info["containerRuntimeVersion"] == "containerd://2.4.2"
        addrs = {a["type"]: a["address"] for a in obj["status"]["addresses"]}
        assert addrs == {"InternalIP": f"192.0.2.{101 + i}", "Hostname": name}
        assert "kwok.x-k8s.io/node" not in obj["metadata"].get("annotations", {})
        assert TAINT in obj["spec"]["taints"]  # kubeadm join's nodeRegistration
        boots.add(info["bootID"])
        # kubeadm's files; kubelet.conf points at the certificate the TLS bootstrap got
        root = rsb.node_dir(name)
        assert (root / "var/lib/kubelet/config.yaml").exists()
        assert "--node-ip" not in (root / "var/lib/kubelet/kubeadm-flags.env").read_text()
        assert "kubelet-client-current.pem" in (root / "etc/kubernetes/kubelet.conf").read_text()
    assert len(boots) == 2  # each its own boot
    csrs = (await rkube.get_json("/apis/certificates.k8s.io/v1/certificatesigningrequests"))[
        "items"
    ]
    bootstrap = [c for c in csrs if c["spec"]["username"].startswith("system:bootstrap:")]
    assert len(bootstrap) >= 2
    assert all(
        any(cond["type"] == "Approved" for cond in c["status"].get("conditions", []))
        for c in bootstrap
    )  # kubeadm's RBAC auto-approves a bootstrap token's CSR
    # a machine of its own: host name, PID 1, address, the cluster's CA at kubeadm's path
    res = run_cli("sandbox", "exec", "--name", rsb.name, "real-1", "--",
                  "sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
                  "ip -4 -br addr show eth0; ls /etc/kubernetes/pki")  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "real-1"
    assert "kubecare.sandbox.nodeinit" in lines[1]
    assert "192.0.2.101/24" in lines[2]
    assert lines[3] == "ca.crt"


async def test_kubeadms_kube_proxy_runs_for_real_inside_the_node_only(
    rsb: Sandbox, rkube: Kube
) -> None:
    """The DaemonSet's pod on a real node runs the kube-proxy image the sandbox built: its
    iptables rules are in the node's network namespace, never in the machine's."""

    async def proxy_ready() -> dict | None:
        items = (await rkube.get_json("/api/v1/namespaces/kube-system/pods",
                                      params={"labelSelector": "k8s-app=kube-proxy"}))["items"]  # fmt: skip
        mine = [p for p in items if p["spec"].get("nodeName") == "real-1"]
        return mine[0] if mine and is_ready(mine[0]) else None

    await wait_for(proxy_ready, timeout=90)

    async def rules() -> str | None:
        res = await asyncio.to_thread(
            run_cli, "sandbox", "exec", "--name", rsb.name, "real-1", "--", "iptables-save"
        )
        return res.stdout if "KUBE-SERVICES" in res.stdout else None

    text = await wait_for(rules, timeout=60)
    assert "default/kubernetes:https" in text  # the Service kube-proxy programmed
    host = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    assert "KUBE-" not in host.stdout  # the machine's own tables untouched


async def test_drain_waits_for_real_grace_periods_and_readiness_under_a_pdb(
    rsb: Sandbox, rkube: Kube, ns: str
) -> None:
    """Pods take 3 s to stop (their SIGTERM handler), replacements become Ready through real
    probes on the other node, and the PDB keeps one Ready replica throughout."""
    await set_unschedulable(rkube, "real-2", True)
    try:
        budget = pdb("web", {"app": "web"}, min_available=1)
        await apply(rkube, ns, web("web", 2, None, term_delay=3), budget)

        async def both_on_real_1() -> bool:
            return len(await ready_on(rkube, ns, "real-1")) == 2

        await wait_for(both_on_real_1, timeout=60)
        await set_unschedulable(rkube, "real-2", False)
        lowest = 2
        done = False
        terminating: dict[str, list[float]] = {}  # pod -> [first, last] seen terminating

        async def sample() -> None:
            nonlocal lowest
            while not done:
                now = await pods(rkube, ns)
                lowest = min(lowest, len([p for p in now if is_ready(p)
                                          and not p["metadata"].get("deletionTimestamp")]))  # fmt: skip
                for p in now:
                    if p["metadata"].get("deletionTimestamp"):
                        seen = terminating.setdefault(p["metadata"]["name"], [time.monotonic()] * 2)
                        seen[1] = time.monotonic()
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        t0 = time.monotonic()
        res = await asyncio.to_thread(
            run_cli, "drain", "real-1", "--ignore-daemonsets", "--timeout", "120s",
            kubeconfig=rsb.kubeconfig, timeout=150,
        )  # fmt: skip
        took = time.monotonic() - t0
        done = True
        await sampler
        assert res.returncode == 0, res.stderr
        assert lowest >= 1  # the budget held through real readiness
        assert took >= 3  # the containers' own shutdown, not an instant delete
        assert len(await ready_on(rkube, ns, "real-2")) == 2
        # each evicted pod stayed Terminating while its SIGTERM handler ran (kwok: gone at once)
        assert len(terminating) == 2
        assert all(last - first >= 2.0 for first, last in terminating.values()), terminating
    finally:
        await set_unschedulable(rkube, "real-1", False)
        await set_unschedulable(rkube, "real-2", False)


async def test_a_reboot_kills_every_container_and_changes_the_boot_id(
    rsb: Sandbox, rkube: Kube, ns: str
) -> None:
    await apply(rkube, ns, web("boot", 1, "real-2"))
    pod = (await wait_for(lambda: ready_on(rkube, ns, "real-2"), timeout=60))[0]
    before = (await node(rkube, "real-2"))["status"]["nodeInfo"]["bootID"]
    res = await asyncio.to_thread(run_cli, "sandbox", "reboot", "--name", rsb.name, "real-2")
    assert res.returncode == 0, res.stderr
    after = (await node(rkube, "real-2"))["status"]["nodeInfo"]["bootID"]
    assert after != before

    async def restarted() -> dict | None:
        p = await rkube.get_json(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}")
        statuses = p["status"].get("containerStatuses") or [{}]
        return p if statuses[0].get("restartCount", 0) >= 1 and is_ready(p) else None

    # the same pod, its container killed by the power cut and started again by the kubelet
    await wait_for(restarted, timeout=60)
    events = (await rkube.get_json("/api/v1/namespaces/default/events"))["items"]
    assert any(e["reason"] == "Rebooted" and e["involvedObject"]["name"] == "real-2"
               for e in events)  # fmt: skip


async def test_a_stopped_kubelet_leaves_its_containers_running(
    rsb: Sandbox, rkube: Kube, ns: str
) -> None:
    await apply(rkube, ns, web("steady", 1, "real-1"), db("down", "real-1"))
    await wait_for(lambda: ready_on(rkube, ns, "real-1"), timeout=60)
    await db_ready(rkube, ns, "down-0")
    res = await asyncio.to_thread(
        run_cli, "sandbox", "node-down", "--name", rsb.name, "real-1", "--wait", timeout=120
    )
    try:
        assert res.returncode == 0, res.stderr
        ready = next(c for c in (await node(rkube, "real-1"))["status"]["conditions"]
                     if c["type"] == "Ready")  # fmt: skip
        assert ready["status"] == "Unknown"  # the node lifecycle controller's verdict
        # a claim whose node is down: its data cannot be read, and nothing is written
        store = rsb.dir / f"store-{ns}"
        bk = await asyncio.to_thread(
            run_cli, "backup", "create", "b", "--to", str(store), "--include-namespaces", ns,
            "--exclude-resources", "secrets", "--volumes", "--volume-helper-image", TOOLS,
            kubeconfig=rsb.kubeconfig,
        )  # fmt: skip
        assert bk.returncode == 1
        assert f'claim {ns}/data-down-0: its volume is on node "real-1", which is not Ready' in (
            bk.stderr
        )
        assert not list(store.glob("*")) and await helpers_left(rkube, ns) == []
        ps = run_cli(
            "sandbox", "exec", "--name", rsb.name, "real-1", "--", "ps", "-ww", "-o", "args"
        )
        assert ps.returncode == 0, ps.stderr
        assert "kubecare-image http" in ps.stdout and "kubelet --" not in ps.stdout
    finally:
        up = await asyncio.to_thread(run_cli, "sandbox", "node-up", "--name", rsb.name, "real-1")
        assert up.returncode == 0, up.stderr
    # the node lifecycle controller marked the pod not Ready meanwhile; the kubelet, back,
    # reports the container it never stopped
    p = (await wait_for(lambda: ready_on(rkube, ns, "real-1"), timeout=30))[0]
    assert p["status"]["containerStatuses"][0]["restartCount"] == 0


async def test_the_apiserver_and_real_pods_reach_each_other_and_nothing_else(
    rsb: Sandbox, rkube: Kube, ns: str
) -> None:
    """A cluster's pod network: the apiserver's pod proxy reaches a pod on a real node (routes
    from the control plane), a pod reaches the apiserver through the kubernetes Service (its
    default route, kube-proxy's rules); the machine itself (192.0.2.2) stays out of reach."""
    await apply(rkube, ns, web("reach", 1, "real-1"))
    [p] = await wait_for(lambda: ready_on(rkube, ns, "real-1"), timeout=60)
    name = p["metadata"]["name"]
    res = await rkube.http.get(f"/api/v1/namespaces/{ns}/pods/{name}:8080/proxy/")
    assert res.status_code == 200 and res.text.strip() == name  # the http image's hostname
    script = ("echo | nc -w 3 10.96.0.1 443 && echo service; "
              "echo | nc -w 2 192.0.2.2 22 || echo machine-unreachable")  # fmt: skip
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
             "spec": {"nodeName": "real-1", "tolerations": [TOLERATION],
                      "terminationGracePeriodSeconds": 0,
                      "containers": [{"name": "p", "image": TOOLS, "command": ["sleep", "3600"]}]}}  # fmt: skip
    await rkube.request_json("POST", f"/api/v1/namespaces/{ns}/pods", body=probe)

    async def running() -> bool:
        got = await rkube.get_json(f"/api/v1/namespaces/{ns}/pods/probe")
        return got["status"].get("phase") == "Running"

    await wait_for(running, timeout=60)
    out = kubectl(rsb, "-n", ns, "exec", "probe", "--", "sh", "-c", script)
    assert out.stdout.split() == ["service", "machine-unreachable"], out.stdout + out.stderr


async def test_a_pods_host_path_is_the_nodes_not_the_machines(
    rsb: Sandbox, rkube: Kube, ns: str
) -> None:
    where = f"/opt/kubecare-e2e-{ns}"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "writer"},
        "spec": {
            "nodeName": "real-1",
            "tolerations": [TOLERATION],
            "restartPolicy": "Never",
            "volumes": [{"name": "h", "hostPath": {"path": where, "type": "DirectoryOrCreate"}}],
            "containers": [
                {
                    "name": "w",
                    "image": TOOLS,
                    "volumeMounts": [{"name": "h", "mountPath": "/h"}],
                    "command": ["sh", "-c", "echo hello > /h/file"],
                }
            ],
        },
    }
    await rkube.request_json("POST", f"/api/v1/namespaces/{ns}/pods", body=body)

    async def done() -> bool:
        p = await rkube.get_json(f"/api/v1/namespaces/{ns}/pods/writer")
        return p["status"].get("phase") == "Succeeded"

    await wait_for(done, timeout=60)
    assert (rsb.node_dir("real-1") / where.lstrip("/") / "file").read_text() == "hello\n"
    assert not Path(where).exists()  # the machine's /opt untouched


def node_cert_not_after(rsb: Sandbox, node: str, path: str) -> str:
    from cryptography import x509

    res = run_cli("sandbox", "exec", "--name", rsb.name, node, "--", "cat", path)
    assert res.returncode == 0, res.stderr
    cert = x509.load_pem_x509_certificate(res.stdout.encode())
    return f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"


async def test_certs_check_reads_each_real_kubelets_certificates_from_a_node(
    rsb: Sandbox,
) -> None:
    """Run where a control-plane admin runs it: on the node (the host never dials node
    addresses); the serving certificate as each kubelet presents it, the client one from its
    TLS bootstrap's CSR, both equal to the files in the kubelet's own pki dir."""
    kubecare = str(Path(sys.executable).parent / "kubecare")
    res = run_cli("sandbox", "exec", "--name", rsb.name, "control-plane", "--", kubecare,
                  "certs", "check", "--kubelets", "--kubeconfig", "/etc/kubernetes/admin.conf",
                  "--warn", "1h", "-o", "json", timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = {(k["node"], k["name"]): k for k in json.loads(res.stdout)["kubelets"]}
    for n in REAL:
        serving, client = rows[(n, "kubelet-serving")], rows[(n, "kubelet-client")]
        assert serving["state"] == "ok" and client["state"] == "ok", (serving, client)
        assert serving["expirationDate"] == node_cert_not_after(
            rsb, n, "/var/lib/kubelet/pki/kubelet.crt"
        )
        assert client["expirationDate"] == node_cert_not_after(
            rsb, n, "/var/lib/kubelet/pki/kubelet-client-current.pem"
        )
    # kwok's nodes have no kubelet to answer: a row saying so, not a failure
    kwok = [k for (node, name), k in rows.items() if node not in REAL and name == "kubelet-serving"]
    assert kwok and all(k["state"] == "unknown" and k["error"] for k in kwok)
    refused = run_cli("certs", "check", "--kubelets", "--sandbox", rsb.name)
    assert refused.returncode == 2 and "only a node of the sandbox reaches" in refused.stderr


async def test_an_image_that_was_not_built_is_never_pulled(rkube: Kube, ns: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nope"},
        "spec": {
            "nodeName": "real-1",
            "tolerations": [TOLERATION],
            "containers": [
                {"name": "a", "image": "kubecare.local/nope:v1", "imagePullPolicy": "Never"},
                {"name": "b", "image": TOOLS, "command": ["sleep", "3600"]},
            ],
        },
    }
    await rkube.request_json("POST", f"/api/v1/namespaces/{ns}/pods", body=body)

    async def waiting() -> dict | None:
        p = await rkube.get_json(f"/api/v1/namespaces/{ns}/pods/nope")
        st = {c["name"]: c["state"] for c in p["status"].get("containerStatuses") or []}
        reason = (st.get("a") or {}).get("waiting", {}).get("reason")
        return st if reason == "ErrImageNeverPull" and "running" in st.get("b", {}) else None

    st = await wait_for(waiting, timeout=60)
    assert "running" in st["b"]  # the tools image the sandbox built runs


def db(name: str, node: str, *, hooks: bool = False) -> dict:
    """A StatefulSet whose one replica writes its data once (a restored volume keeps it) to a
    claim of the sandbox's local-path class on ``node``."""
    script = ("[ -f /data/.written ] || { mkdir -p /data/sub && head -c 20000000 /dev/urandom "
              "> /data/sub/blob && echo hello > /data/hello && ln -s hello /data/link && "
              "touch /data/.written; }; exec sleep 36000")  # fmt: skip
    spec: dict = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [TOLERATION],
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "db", "image": TOOLS, "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        # Ready once the data is written
                        "readinessProbe": {"exec": {"command": ["test", "-f", "/data/.written"]},
                                           "periodSeconds": 1}}],
    }  # fmt: skip
    sts = statefulset(name, 1, spec)
    if hooks:  # a marker the copy must contain (pre) and the live volume must not (post)
        pre, post = VOLUME_HOOKS["pre"], VOLUME_HOOKS["post"]
        sts["spec"]["template"]["metadata"]["annotations"] = {
            pre + "command": '["sh", "-c", "date > /data/frozen"]',
            post + "command": '["rm", "/data/frozen"]',
        }
    sts["spec"]["volumeClaimTemplates"] = [{
        "metadata": {"name": "data"},
        "spec": {"storageClassName": LOCAL_CLASS, "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}},
    }]  # fmt: skip
    return sts


def kubectl(rsb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    """The real kubectl, to see the data with another tool than the one under test."""
    import shutil
    import sys

    exe = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    return subprocess.run([exe, "--kubeconfig", str(rsb.kubeconfig), *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def checksums(rsb: Sandbox, ns: str, pod: str) -> dict[str, str]:
    res = kubectl(rsb, "-n", ns, "exec", pod, "--", "sh", "-c",
                  "cd /data && find . -type f | sort | xargs sha256sum")  # fmt: skip
    assert res.returncode == 0, res.stderr
    return {line.split()[1]: line.split()[0] for line in res.stdout.splitlines()}


async def db_ready(kube: Kube, ns: str, name: str = "db-0") -> dict:
    async def ready() -> dict | None:
        try:
            p = await kube.get_json(f"/api/v1/namespaces/{ns}/pods/{name}")
        except NotFound:
            return None
        return p if is_ready(p) else None

    return await wait_for(ready, timeout=90)


async def volume_of(kube: Kube, ns: str, claim: str) -> dict:
    c = await kube.get_json(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
    return await kube.get_json(f"/api/v1/persistentvolumes/{c['spec']['volumeName']}")


async def helpers_left(kube: Kube, ns: str) -> list[str]:
    return [p["metadata"]["name"] for p in await pods(kube, ns, VOLUME_HELPER)
            if not p["metadata"].get("deletionTimestamp")]  # fmt: skip


async def test_a_volume_backup_brings_back_the_same_bytes_after_the_namespace_is_deleted(
    rsb: Sandbox, rkube: Kube, tmp_path: Path
) -> None:
    """A StatefulSet's claim on a real node, its pre/post hooks, backed up with --volumes
    (encrypted, and plain for the standard tools), the namespace deleted (the provisioner
    reclaims the volume and its data on the node), restored: the same bytes, in a new volume on
    the same node, the pre hook's marker in them and not left behind on the live volume."""
    ns = await new_namespace(rkube)
    await apply(rkube, ns, db("db", "real-1", hooks=True))
    await db_ready(rkube, ns)
    old = await volume_of(rkube, ns, "data-db-0")
    tree = rsb.node_dir("real-1") / old["spec"]["hostPath"]["path"].lstrip("/")
    assert (tree / "hello").read_text() == "hello\n"  # the data is in the node's own tree
    before = checksums(rsb, ns, "db-0")
    assert set(before) == {"./.written", "./hello", "./sub/blob"}
    key = tmp_path / "key"
    gen = run_cli("backup", "keygen", "-o", str(key))
    assert gen.returncode == 0, gen.stderr
    store = tmp_path / "store"
    common = ("--to", str(store), "--include-namespaces", ns, "--volumes",
              "--volume-helper-image", TOOLS, "-o", "json")  # fmt: skip
    res = await asyncio.to_thread(run_cli, "backup", "create", "enc", *common, "--encrypt-to",
                                  gen.stdout.strip(), kubeconfig=rsb.kubeconfig)  # fmt: skip
    assert res.returncode == 0, res.stderr
    [v] = json.loads(res.stdout)["volumes"]
    assert (v["claim"], v["method"], v["node"], v["encrypted"]) == ("data-db-0", "fs", "real-1",
                                                                    True)  # fmt: skip
    assert [(h["phase"], h["pod"], h["ok"]) for h in v["hooks"]] == [("pre", "db-0", True),
                                                                     ("post", "db-0", True)]  # fmt: skip
    res = await asyncio.to_thread(run_cli, "backup", "create", "plain", *common,
                                  "--exclude-resources", "secrets", kubeconfig=rsb.kubeconfig)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert await helpers_left(rkube, ns) == []
    assert "./frozen" not in checksums(rsb, ns, "db-0")  # the post hook ran
    # the plain archive is standard tools all the way down
    inner = subprocess.run(
        f"tar --zstd -xOf {store}/plain.tar.zst volumes/{ns}/data-db-0.tar | tar -tf -",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert {"./hello", "./sub/blob", "./link", "./frozen"} <= set(inner)
    assert (store / "enc.tar.zst").stat().st_mode & 0o777 == 0o600

    await rkube.http.delete(f"/api/v1/namespaces/{ns}")

    async def gone() -> bool:
        return (await rkube.http.get(f"/api/v1/namespaces/{ns}")).status_code == 404

    await wait_for(gone, timeout=90)

    async def reclaimed() -> bool:
        r = await rkube.http.get(f"/api/v1/persistentvolumes/{old['metadata']['name']}")
        return r.status_code == 404 and not tree.exists()

    await wait_for(reclaimed, timeout=30)
    res = await asyncio.to_thread(
        run_cli, "backup", "restore", "enc", "--from", str(store), "--identity", str(key),
        "--volume-helper-image", TOOLS, "-o", "json", kubeconfig=rsb.kubeconfig,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    [r] = json.loads(res.stdout)["volumes"]
    assert (r["claim"], r["outcome"], r["node"]) == (f"{ns}/data-db-0", "restored", "real-1")
    try:
        await db_ready(rkube, ns)
        after = checksums(rsb, ns, "db-0")
        assert after.pop("./frozen")  # taken after the pre hook, before the post hook
        assert after == before
        new = await volume_of(rkube, ns, "data-db-0")
        assert new["metadata"]["name"] != old["metadata"]["name"]
        link = kubectl(rsb, "-n", ns, "exec", "db-0", "--", "ls", "-l", "/data/link")
        assert link.stdout.strip().endswith("/data/link -> hello"), link.stdout + link.stderr
        assert await helpers_left(rkube, ns) == []
    finally:
        await rkube.http.delete(f"/api/v1/namespaces/{ns}")


async def test_volume_backups_refuse_what_they_cannot_do_naming_the_claim_and_write_nothing(
    rsb: Sandbox, rkube: Kube, ns: str, tmp_path: Path
) -> None:
    await apply(rkube, ns, db("tiny", "real-2"))
    await db_ready(rkube, ns, "tiny-0")
    store = tmp_path / "store"
    store.mkdir()

    def backup(*extra: str, to: Path = store, name: str = "b") -> subprocess.CompletedProcess[str]:
        return run_cli("backup", "create", name, "--to", str(to), "--include-namespaces", ns,
                       "--exclude-resources", "secrets", "--volumes", *extra,
                       kubeconfig=rsb.kubeconfig)  # fmt: skip

    # an image the node does not have (no registry here): the kubelet's own pull failure
    res = await asyncio.to_thread(backup, "--volume-helper-image", "docker.io/library/busybox:1.37")
    assert res.returncode == 1
    assert f"claim {ns}/data-tiny-0" in res.stderr and "cannot start" in res.stderr
    assert "Traceback" not in res.stderr
    # more data than the store has room for: refused before a byte is written
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "kubecare-e2e", str(small)],
                   check=True)  # fmt: skip
    try:
        await node_ready(rkube, "real-2")
        res = await asyncio.to_thread(backup, "--volume-helper-image", TOOLS, to=small)
        assert res.returncode == 1
        assert f"claim {ns}/data-tiny-0 holds 19.1 MiB" in res.stderr and "free" in res.stderr
        assert list(small.iterdir()) == []  # no archive, no spool
    finally:
        subprocess.run(["umount", str(small)], check=True)
    # a claim whose volume is on a node that is gone
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"gone-{ns}"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                   "storageClassName": "", "hostPath": {"path": "/tmp/gone"},
                   "claimRef": {"namespace": ns, "name": "orphan"},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                       {"key": "kubernetes.io/hostname", "operator": "In",
                        "values": ["gone-node"]}]}]}}}}  # fmt: skip
    await rkube.request_json("POST", "/api/v1/persistentvolumes", body=pv)
    try:
        claim = {"metadata": {"name": "orphan"}, "spec": {
            "storageClassName": "", "volumeName": pv["metadata"]["name"],
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
        await rkube.request_json("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
                                 body=claim)  # fmt: skip

        async def bound() -> bool:
            c = await rkube.get_json(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/orphan")
            return c["status"].get("phase") == "Bound"

        await wait_for(bound, timeout=30)
        await node_ready(rkube, "real-2")
        res = await asyncio.to_thread(backup, "--volume-helper-image", TOOLS)
        assert res.returncode == 1
        assert f'claim {ns}/orphan: its volume is on node "gone-node", which no longer exists' in (
            res.stderr
        )
        res = await asyncio.to_thread(backup, "--volume-helper-image", TOOLS,
                                      "--exclude-volume", f"{ns}/orphan", "-o", "json")  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert [v["claim"] for v in out["volumes"]] == ["data-tiny-0"]
        assert out["volumesSkipped"] == [{"claim": f"{ns}/orphan",
                                          "reason": "excluded (--exclude-volume)"}]  # fmt: skip
    finally:
        await rkube.http.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
    assert sorted(p.name for p in store.iterdir()) == ["b.tar.zst"]  # the one that worked
    # a volume whose data cannot be restored stops the restore before the workloads: a
    # database started on an empty volume would make a new, empty one
    target = f"{ns}-x"
    try:
        res = await asyncio.to_thread(
            run_cli, "backup", "restore", "b", "--from", str(store), "--namespace-map",
            f"{ns}={target}", "--volume-helper-image", "docker.io/library/busybox:1.37", "-o",
            "json", kubeconfig=rsb.kubeconfig,
        )  # fmt: skip
        assert res.returncode == 1, res.stderr
        out = json.loads(res.stdout)
        assert [(v["claim"], v["outcome"]) for v in out["volumes"]] == [
            (f"{target}/data-tiny-0", "failed")]  # fmt: skip
        assert "cannot start" in out["volumes"][0]["reason"]
        sts = [o for o in out["objects"] if o["type"] == "statefulsets.apps"]
        assert [o["outcome"] for o in sts] == ["failed"]
        assert f"delete the claim (kubectl -n {target} delete pvc data-tiny-0)" in sts[0]["reason"]
        missing = await rkube.http.get(f"/apis/apps/v1/namespaces/{target}/statefulsets/tiny")
        assert missing.status_code == 404
        assert await helpers_left(rkube, target) == []
    finally:
        await rkube.http.delete(f"/api/v1/namespaces/{target}")
    res = await asyncio.to_thread(backup, "--exclude-volume", f"{ns}/nope", name="c")
    assert res.returncode == 2 and "no such claim" in res.stderr
    res = await asyncio.to_thread(backup, "--volumes=snapshot", name="c")
    assert res.returncode == 2 and "not supported yet" in res.stderr
    assert sorted(p.name for p in store.iterdir()) == ["b.tar.zst"]
    assert await helpers_left(rkube, ns) == []


async def test_a_cut_exec_stream_fails_the_volume_backup_and_writes_nothing(
    rsb: Sandbox, rkube: Kube, ns: str, tmp_path: Path
) -> None:
    """The copy's stream cut half way (through the fault proxy): the backup fails naming the
    claim, no file is left under the backup's name, and the helper pod is deleted."""
    from kubecare.backup.create import CreateOptions, create_backup
    from kubecare.backup.rules import Filters
    from kubecare.errors import KubecareError

    from ..faultproxy import FaultProxy, Rule

    await apply(rkube, ns, db("cut", "real-2"))
    await db_ready(rkube, ns, "cut-0")
    opts = CreateOptions(filters=Filters(include_namespaces=(ns,), exclude_resources=("secrets",)),
                         volumes="fs", helper_image=TOOLS)  # fmt: skip
    async with FaultProxy(rsb) as proxy:
        rule = proxy.add(Rule("GET", r"/exec\?command=tar", cut_after=4 << 20))
        before = ""
        async with Kube(ClientOptions(kubeconfig=str(proxy.kubeconfig))) as k:
            for _ in range(2):
                with pytest.raises(KubecareError, match=f"claim {ns}/data-cut-0: ") as e:
                    await create_backup(k, tmp_path / "b.tar.zst", "b", opts)
                if rule.hits:
                    break
                # it failed before the copy began (seen once in a full run): that is not
                # what this test is about; once more, keeping the first reason
                before = str(e.value)
        assert rule.hits == 1, before
    assert "cut" in str(e.value) and "run it again" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    assert await helpers_left(rkube, ns) == []


async def test_maintain_drains_a_real_node_through_a_real_reboot(
    rsb: Sandbox, rkube: Kube, ns: str
) -> None:
    """drain → a power cut and boot (every container on the node killed) → Ready with a new
    boot ID → uncordon; the workload meanwhile Ready on the other real node."""
    import sys

    await apply(rkube, ns, web("m", 2, None, term_delay=1))

    async def two_ready() -> bool:
        return len(await ready_on(rkube, ns)) == 2

    await wait_for(two_ready, timeout=60)
    reboot = [sys.executable, "-m", "kubecare.cli.app", "sandbox", "reboot", "--name", rsb.name,
              "real-2"]  # fmt: skip
    res = await asyncio.to_thread(
        run_cli, "maintain", "real-2", "--expect-reboot", "--ready-timeout", "90s", "-o", "json",
        "--", *reboot, kubeconfig=rsb.kubeconfig, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["exit_code"] == 0 and report["uncordoned"] is True
    assert report["boot_id_after"] != report["boot_id_before"]
    assert not (await node(rkube, "real-2"))["spec"].get("unschedulable")
    await wait_for(two_ready, timeout=60)


async def test_sandbox_down_leaves_no_process_mount_cgroup_or_interface(rsb: Sandbox) -> None:
    """The module's sandbox, taken down by this last test (the fixture then finds it gone)."""
    state = rsb.load()
    inits = [rsb.real_init(state, n) for n in REAL]
    assert all(inits)
    tree = str(rsb.dir / "nodes")
    stopped = rsb.down()
    assert {f"real node {n}" for n in REAL} <= set(stopped)
    assert not any(Path(f"/proc/{pid}").exists() for pid in inits)
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if tree.encode() in (proc / "cmdline").read_bytes():
                    leftovers.append(proc.name)
            except OSError:
                pass
    assert leftovers == []
    assert not list(Path("/sys/fs/cgroup").glob(f"*/kubecare/{rsb.name}"))
    assert tree not in Path("/proc/self/mountinfo").read_text()
    # containerd's opt dir and the rest of the nodes' system dirs were their own
    assert sorted(p.name for p in Path("/opt").iterdir()) == OPT_BEFORE
    # the machine's own network was never touched (the cables were in the switch's namespace)
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    assert not [x for x in links if x["ifname"].startswith(("vreal", "cni0"))]
