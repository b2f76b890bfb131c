"""Executors: who performs a node's upgrade steps once kubecare has drained it.

- ``command``: a local command line, a template with ``{node}``, ``{version}``, ``{minor}`` and
  ``{role}`` (also in $NODE, $VERSION, $MINOR, $ROLE).
- ``ssh``: a step list run over SSH (asyncssh) on the node, stopping at the first failing step;
  by default the kubeadm/apt procedure of kubernetes.io "Upgrading kubeadm clusters".
- ``job``: the same step list in a privileged Job pinned to the node, entering the host's
  namespaces with nsenter (no SSH keys needed).

The ``sandbox`` executor (the same steps by the real kubeadm, in a sandbox node's own view) lives
with the sandbox, :mod:`kubecare.sandbox.executor`: this package never imports the sandbox.

Every executor checks what it can before anything changes (``check``): template placeholders,
SSH authentication to every node, the sandbox's build of the target version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shlex
import shutil
import string
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from kubecare.errors import (
    TRANSIENT,
    Conflict,
    KubecareError,
    NotFound,
    OperationFailed,
    UsageError,
)
from kubecare.kube import JSON, Kube
from kubecare.upgrade.plan import CONTROL_PLANE, FIRST_CONTROL_PLANE, WORKER, NodeStep
from kubecare.versions.semver import Version

Line = Callable[[str], None]
PLACEHOLDERS = ("node", "version", "minor", "role")

#: kubernetes.io "Upgrading kubeadm clusters" (pkgs.k8s.io Debian packages): the apt source is
#: per minor, so it is switched first; packages are held between upgrades.
_APT_KUBEADM = (
    "sed -i -E 's#/v[0-9]+\\.[0-9]+/deb/#/v{minor}/deb/#' /etc/apt/sources.list.d/kubernetes.list",
    "apt-mark unhold kubeadm && apt-get update && apt-get install -y kubeadm='{version}-*' && apt-mark hold kubeadm",
)
_APT_KUBELET = (
    "apt-mark unhold kubelet kubectl && apt-get install -y kubelet='{version}-*' kubectl='{version}-*' && apt-mark hold kubelet kubectl",
    "systemctl daemon-reload",
    "systemctl restart kubelet",
)
DEFAULT_STEPS: dict[str, tuple[str, ...]] = {
    FIRST_CONTROL_PLANE: (*_APT_KUBEADM, "kubeadm upgrade apply --yes v{version}", *_APT_KUBELET),
    CONTROL_PLANE: (*_APT_KUBEADM, "kubeadm upgrade node", *_APT_KUBELET),
    WORKER: (*_APT_KUBEADM, "kubeadm upgrade node", *_APT_KUBELET),
}


def values(step: NodeStep, target: Version) -> dict[str, str]:
    return {
        "node": step.node,
        "version": f"{target.major}.{target.minor}.{target.patch}"
        + (f"-{target.pre}" if target.pre else ""),
        "minor": target.minor_line,
        "role": step.role,
    }


def check_template(template: str, flag: str, allowed: Sequence[str] = PLACEHOLDERS) -> None:
    """Unknown placeholders, stray braces, conversions or format specs (``{node!r}``,
    ``{version:d}``): a usage error before anything changes."""
    hint = " (write a literal brace as {{ or }})"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UsageError(f"{flag} {template!r}: {e}{hint}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in allowed:
            raise UsageError(
                f"{flag} {template!r}: unknown placeholder {{{name}}}; use "
                + ", ".join("{" + a + "}" for a in allowed)
            )
        if spec or conversion:
            raise UsageError(
                f"{flag} {template!r}: write {{{name}}} without a conversion or format spec{hint}"
            )


def render(template: str, vals: Mapping[str, str]) -> str:
    return template.format(**vals)


def load_steps(path: Path) -> dict[str, tuple[str, ...]]:
    """A steps file: YAML, either one list for every node or a mapping of role -> list
    (``first-control-plane``, ``control-plane``, ``worker``; missing roles keep the defaults)."""
    import yaml

    try:
        doc = yaml.safe_load(path.expanduser().read_text())
    except OSError as e:
        raise UsageError(f"--steps {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--steps {path}: not YAML ({str(e).splitlines()[0]})") from None
    if isinstance(doc, list):
        doc = {role: doc for role in DEFAULT_STEPS}
    if not isinstance(doc, dict) or not all(
        r in DEFAULT_STEPS and isinstance(v, list) and all(isinstance(s, str) for s in v)
        for r, v in doc.items()
    ):
        raise UsageError(
            f"--steps {path}: expected a list of commands, or a mapping of "
            f"{', '.join(DEFAULT_STEPS)} to lists of commands"
        )
    steps = {**DEFAULT_STEPS, **{r: tuple(v) for r, v in doc.items()}}
    for role, lines in steps.items():
        for line in lines:
            check_template(line, f"--steps {path} ({role})")
    return steps


class Executor(Protocol):
    name: str
    supports_surge: bool

    async def check(self, steps: Sequence[NodeStep], target: Version) -> None: ...

    async def upgrade(self, step: NodeStep, target: Version, on_line: Line) -> None: ...

    async def provision(self, replacing: NodeStep, target: Version, on_line: Line) -> str: ...

    async def deprovision(self, node: str, on_line: Line) -> None: ...


class _NoSurge:
    name = ""
    supports_surge = False

    async def provision(self, replacing: NodeStep, target: Version, on_line: Line) -> str:
        raise UsageError(
            f"--strategy surge with --executor {self.name} needs --provision-command and "
            "--deprovision-command"
        )

    async def deprovision(self, node: str, on_line: Line) -> None:
        await self.provision(NodeStep(node, WORKER, 0, ()), Version(0, 0, 0), on_line)


class CommandExecutor(_NoSurge):
    """A local command per node (``--command "ansible-playbook upgrade.yml -l {node} -e v={version}"``)."""

    name = "command"

    def __init__(
        self,
        template: str,
        *,
        timeout: float | None = None,
        provision: str | None = None,
        deprovision: str | None = None,
    ) -> None:
        if not template.strip():
            raise UsageError("--executor command needs --command TEMPLATE")
        for flag, t in (
            ("--command", template),
            ("--provision-command", provision),
            ("--deprovision-command", deprovision),
        ):
            if t:
                check_template(t, flag)
                try:
                    shlex.split(t)
                except ValueError as e:
                    raise UsageError(f"{flag} {t!r}: {e}") from None
        self.supports_surge = bool(provision and deprovision)
        self.template = template
        self.timeout = timeout
        self.provision_template = provision
        self.deprovision_template = deprovision

    async def check(self, steps: Sequence[NodeStep], target: Version) -> None:
        argv = shlex.split(self.template)
        if (
            argv
            and shutil.which(render(argv[0], values(steps[0], target)) if steps else argv[0])
            is None
        ):
            raise UsageError(f"--command: {argv[0]!r} is not an executable on $PATH")

    async def _run(self, template: str, vals: dict[str, str], on_line: Line) -> list[str]:
        from kubecare.nodes.maintain import run_local

        argv = [render(a, vals) for a in shlex.split(template)]
        env = {k.upper(): v for k, v in vals.items()}
        lines: list[str] = []

        def line(text: str) -> None:
            lines.append(text)
            on_line(text)

        code = await run_local(argv, env, self.timeout, line)
        if code != 0:
            tail = f": {lines[-1]}" if lines else ""
            raise OperationFailed(f"{shlex.join(argv)} exited {code}{tail}")
        return lines

    async def upgrade(self, step: NodeStep, target: Version, on_line: Line) -> None:
        await self._run(self.template, values(step, target), on_line)

    async def provision(self, replacing: NodeStep, target: Version, on_line: Line) -> str:
        if not self.provision_template:
            return await super().provision(replacing, target, on_line)
        lines = await self._run(self.provision_template, values(replacing, target), on_line)
        name = lines[-1].strip() if lines else ""
        if not name:
            raise OperationFailed(
                "--provision-command printed no node name (its last line must be the new node's name)"
            )
        return name

    async def deprovision(self, node: str, on_line: Line) -> None:
        if not self.deprovision_template:
            await super().deprovision(node, on_line)
            return
        vals = {"node": node, "version": "", "minor": "", "role": WORKER}
        await self._run(self.deprovision_template, vals, on_line)


async def _node_address(kube: Kube, node: str) -> str:
    obj = await kube.get_json(f"/api/v1/nodes/{node}", what=f'node "{node}"')
    for a in (obj.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address"))
    return node


class SshExecutor(_NoSurge):
    """The step list over SSH, one connection per node, the first failing step ends it."""

    name = "ssh"

    def __init__(
        self,
        kube: Kube,
        *,
        user: str = "root",
        host: str = "{ip}",
        port: int = 22,
        identity: str | None = None,
        known_hosts: str | None = None,
        steps: dict[str, tuple[str, ...]] | None = None,
        timeout: float | None = None,
    ) -> None:
        check_template(host, "--ssh-host", ("node", "ip"))
        self.kube = kube
        self.user = user
        self.host = host
        self.port = port
        self.identity = identity
        self.known_hosts = known_hosts
        self.steps = steps or DEFAULT_STEPS
        self.timeout = timeout

    async def _target(self, node: str) -> tuple[str, int]:
        ip = await _node_address(self.kube, node) if "{ip}" in self.host else ""
        host = self.host.format(node=node, ip=ip)
        name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        return (name, int(port)) if port.isdigit() else (host, self.port)

    def _connect(self, host: str, port: int) -> Any:
        import asyncssh

        return asyncssh.connect(
            host,
            port=port,
            username=self.user,
            known_hosts=self.known_hosts or (),
            client_keys=[self.identity] if self.identity else (),
            connect_timeout=15,
        )

    async def check(self, steps: Sequence[NodeStep], target: Version) -> None:
        """Log in to every node once (and run ``true``) before the first drain."""
        import asyncssh

        async def one(node: str) -> None:
            host, port = await self._target(node)
            try:
                async with self._connect(host, port) as conn:
                    await conn.run("true", check=True, timeout=30)
            except asyncssh.PermissionDenied:
                raise OperationFailed(
                    f"ssh {self.user}@{host}:{port} (node {node}): authentication failed; give "
                    "--ssh-key with a key the node accepts, or check --ssh-user"
                ) from None
            except asyncssh.HostKeyNotVerifiable:
                raise OperationFailed(
                    f"ssh {host}:{port} (node {node}): host key not trusted; add it to "
                    "--known-hosts (default ~/.ssh/known_hosts)"
                ) from None
            except (OSError, asyncssh.Error, TimeoutError) as e:
                raise OperationFailed(f"ssh {self.user}@{host}:{port} (node {node}): {e}") from None

        for s in steps:
            await one(s.node)

    async def upgrade(self, step: NodeStep, target: Version, on_line: Line) -> None:
        import asyncssh

        host, port = await self._target(step.node)
        vals = values(step, target)
        lines = [render(t, vals) for t in self.steps[step.role]]
        try:
            async with asyncio.timeout(self.timeout), self._connect(host, port) as conn:
                for i, line in enumerate(lines, 1):
                    on_line(f"[{i}/{len(lines)}] {line}")
                    result = await conn.run(line, check=False)
                    for text in (str(result.stdout or "") + str(result.stderr or "")).splitlines():
                        on_line(text)
                    if result.exit_status != 0:
                        raise OperationFailed(
                            f"step {i}/{len(lines)} on {step.node} exited {result.exit_status}: {line}"
                        )
        except TimeoutError:
            raise OperationFailed(
                f"the steps on {step.node} did not finish within {self.timeout:g}s"
            ) from None
        except (OSError, asyncssh.Error) as e:
            raise OperationFailed(
                f"ssh {self.user}@{host}:{port} (node {step.node}): {e}"
            ) from None


class JobExecutor(_NoSurge):
    """The step list in a privileged Job pinned to the node (nsenter into the host)."""

    name = "job"
    namespace = "kube-system"

    def __init__(
        self,
        kube: Kube,
        *,
        image: str = "debian:bookworm-slim",
        steps: dict[str, tuple[str, ...]] | None = None,
        timeout: float = 1800,
    ) -> None:
        self.kube = kube
        self.image = image
        self.steps = steps or DEFAULT_STEPS
        self.timeout = timeout

    async def check(self, steps: Sequence[NodeStep], target: Version) -> None:
        # The Job is created with the server's validation first: a bad image name or a
        # forbidden privileged pod is found before the first drain.
        if steps:
            # A 409: a Job of that name is left from an earlier run (upgrade() waits for it or
            # replaces it). The name is checked last, after validation and admission passed.
            with contextlib.suppress(Conflict):
                await self.kube.request_json(
                    "POST",
                    f"/apis/batch/v1/namespaces/{self.namespace}/jobs",
                    body=self.manifest(steps[0], target),
                    params={"dryRun": "All"},
                    what="the upgrade Job (server-side dry run)",
                )

    def job_name(self, node: str, target: Version) -> str:
        digest = hashlib.sha256(f"{node}/{target}".encode()).hexdigest()[:8]
        return f"kubecare-upgrade-{node[:30].rstrip('-.')}-{digest}"

    def manifest(self, step: NodeStep, target: Version) -> JSON:
        vals = values(step, target)
        script = "\n".join(render(t, vals) for t in self.steps[step.role])
        labels = {
            "app.kubernetes.io/managed-by": "kubecare",
            "kubecare.io/upgrade-node": step.node[:63],
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": self.job_name(step.node, target), "namespace": self.namespace, "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": int(self.timeout),
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeName": step.node,  # no scheduler: the node is cordoned
                        "restartPolicy": "Never",
                        "hostPID": True,
                        "hostNetwork": True,
                        "priorityClassName": "system-node-critical",
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [
                            {
                                "name": "upgrade",
                                "image": self.image,
                                "securityContext": {"privileged": True},
                                "command": [
                                    "nsenter", "--target", "1", "--mount", "--uts", "--ipc",
                                    "--net", "--pid", "--", "sh", "-ec", script,
                                ],
                            }
                        ],
                    },
                },
            },
        }  # fmt: skip

    async def upgrade(self, step: NodeStep, target: Version, on_line: Line) -> None:
        """Run the node's Job to its end. Every read is retried through transient errors until
        the deadline: on one control plane (or behind a load balancer) `kubeadm upgrade apply`
        restarts the apiserver this poll talks to, and giving up then would record a failure
        while kubeadm goes on. A Job an earlier run left running is waited for, never deleted
        (that would kill kubeadm mid static-pod swap); only a Failed one is started again."""
        name = self.job_name(step.node, target)
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        deadline = time.monotonic() + self.timeout + 60
        outage = _Outage(on_line, f"job {self.namespace}/{name}")
        job = await outage.call(
            lambda: self._get(f"{path}/{name}", name), deadline, "reading the Job"
        )
        state = _job_state(job) if job is not None else ""
        if state == "Complete":
            on_line(f"job {self.namespace}/{name} already completed (an earlier run)")
            return
        if state == "Failed":
            await self.kube.request_json(
                "DELETE", f"{path}/{name}", params={"propagationPolicy": "Foreground"},
                what=f"job {name}",
            )  # fmt: skip
            await self._gone(f"{path}/{name}")
            job = None
        if job is None:
            # A Conflict: an earlier attempt's POST was committed and its answer lost; that
            # Job is this one.
            with contextlib.suppress(Conflict):
                await outage.call(
                    lambda: self.kube.request_json(
                        "POST", path, body=self.manifest(step, target), what=f"job {name}"
                    ),
                    deadline,
                    "creating the Job",
                )
            on_line(f"job {self.namespace}/{name} created on {step.node}")
        else:
            on_line(
                f"job {self.namespace}/{name} still running from an earlier run; waiting for it"
            )
        while True:
            job = await outage.call(
                lambda: self._get(f"{path}/{name}", name), deadline, "waiting for the Job"
            )
            state = _job_state(job) if job is not None else "gone"
            if state == "Complete":
                on_line(f"job {self.namespace}/{name} completed")
                return
            if state in ("Failed", "gone") or time.monotonic() > deadline:
                tail = await self._log_tail(name) if state != "gone" else "deleted by someone"
                raise OperationFailed(
                    f"job {self.namespace}/{name} on {step.node} failed"
                    + (f": {tail}" if tail else "")
                    + f"; see kubectl -n {self.namespace} logs job/{name}"
                )
            await asyncio.sleep(1.0)

    async def _get(self, path: str, name: str) -> JSON | None:
        try:
            return await self.kube.get_json(path, what=f"job {name}")
        except NotFound:
            return None

    async def _gone(self, path: str) -> None:
        for _ in range(120):
            try:
                await self.kube.get_json(path)
            except NotFound:
                return
            await asyncio.sleep(0.5)
        raise OperationFailed(f"{path} was not deleted within 60s")

    async def _log_tail(self, name: str) -> str:
        with contextlib.suppress(KubecareError):
            pods = await self.kube.list_objects(
                f"/api/v1/namespaces/{self.namespace}/pods",
                params={"labelSelector": f"job-name={name}"},
            )
            for p in pods:
                text = await self.kube.get_text(
                    f"/api/v1/namespaces/{self.namespace}/pods/{p['metadata']['name']}/log?tailLines=5"
                )
                lines = [ln for ln in text.splitlines() if ln.strip()]
                if lines:
                    return lines[-1]
        return ""


class _Outage:
    """Calls retried through transient apiserver errors until a deadline, saying once per
    outage that the apiserver is away and once that it is back."""

    def __init__(self, on_line: Line, what: str) -> None:
        self.on_line, self.what, self.since = on_line, what, 0.0

    async def call(self, fn: Callable[[], Any], deadline: float, doing: str) -> Any:
        while True:
            try:
                out = await fn()
            except TRANSIENT as e:
                if time.monotonic() > deadline:
                    raise OperationFailed(
                        f"{self.what}: the apiserver did not answer while {doing} until the "
                        f"step's deadline ({e.message})"
                    ) from None
                if not self.since:
                    self.since = time.monotonic()
                    self.on_line(f"apiserver not answering ({e.message}); {doing} again")
                await asyncio.sleep(1.0)
                continue
            if self.since:
                self.on_line(f"apiserver back after {time.monotonic() - self.since:.0f}s")
                self.since = 0.0
            return out


def _job_state(job: JSON) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return str(c["type"])
    return ""
