"""``kubecare backup schedule``: the manifests that run ``kubecare backup create`` in the
cluster on a schedule — a ServiceAccount, a read-only ClusterRole, its binding, and a CronJob.

The role names every resource type the cluster serves, with ``get`` and ``list`` only. Not
``resources: ["*"]``: in RBAC that also matches subresources, and ``get`` on ``nodes/proxy``
reaches every kubelet's API (exec included), ``get`` on ``pods/exec`` opens a shell where the
websocket upgrade is authorized as a GET. Types added later (new CRDs) are listed with a
warning until the manifests are generated again.

Pure: the manifests are built from the flags and the discovered types; ``kubectl apply -f -``
(or a GitOps repo) takes them from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

JSON = dict[str, object]
_CRON = re.compile(r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$")


@dataclass(frozen=True)
class ScheduleOptions:
    image: str
    schedule: str = "0 2 * * *"
    namespace: str = "kubecare"
    name: str = "kubecare-backup"
    store: str = ""  # s3://bucket/prefix, or a directory on the volume of ``claim``
    claim: str = ""  # a PersistentVolumeClaim to keep backups on (a directory store)
    s3_secret: str = ""  # a Secret with AWS_* variables (credentials, endpoint)
    recipients: tuple[str, ...] = ()
    allow_plaintext_secrets: bool = False
    keep_last: int | None = None
    keep_within: str = ""
    extra_args: tuple[str, ...] = ()
    resources: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (group, resources) to read


def read_rules(
    resources: list[tuple[str, str, tuple[str, ...]]],
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(group, resource, verbs) of the discovered types -> per group, the listable resources
    (top level only: never a subresource)."""
    per: dict[str, set[str]] = {}
    for group, resource, verbs in resources:
        if "/" not in resource and "list" in verbs:
            per.setdefault(group, set()).add(resource)
    return tuple((g, tuple(sorted(per[g]))) for g in sorted(per))


def validate(o: ScheduleOptions) -> None:
    if not o.resources:
        raise UsageError("no resource types to grant: the cluster's discovery was empty")
    if not o.image:
        raise UsageError("--image is required: an image with kubecare installed")
    if not _CRON.match(o.schedule.strip()):
        raise UsageError(f"--schedule {o.schedule!r} is not a cron schedule (e.g. '0 2 * * *')")
    if o.store.startswith("s3://"):
        if o.claim:
            raise UsageError("--claim is for a directory store, not s3://")
    elif o.claim and o.store and not o.store.startswith("/"):
        raise UsageError(f"--to {o.store!r} must be an absolute path on the --claim volume")
    elif not o.claim:
        raise UsageError(
            "in the cluster, backups need somewhere to go: --to s3://bucket/prefix "
            "(with --s3-secret) or --claim PVC with --to /a/dir/on/it"
        )
    if not o.recipients and not o.allow_plaintext_secrets:
        raise UsageError(
            "give --encrypt-to RECIPIENT (Secrets are encrypted in the backup) or "
            "--allow-plaintext-secrets"
        )


def manifests(o: ScheduleOptions) -> list[JSON]:
    validate(o)
    labels = {"app.kubernetes.io/name": "kubecare", "app.kubernetes.io/component": "backup"}
    store = o.store or "/backups"
    args = ["backup", "create", "--to", store]
    for r in o.recipients:
        args += ["--encrypt-to", r]
    if o.allow_plaintext_secrets:
        args.append("--allow-plaintext-secrets")
    if o.keep_last is not None:
        args += ["--keep-last", str(o.keep_last)]
    if o.keep_within:
        args += ["--keep-within", o.keep_within]
    args += list(o.extra_args)
    container: JSON = {
        "name": "backup",
        "image": o.image,
        "command": ["kubecare"],
        "args": args,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "capabilities": {"drop": ["ALL"]},
        },
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[JSON] = [{"name": "tmp", "emptyDir": {}}]
    if o.claim:
        volumes.append({"name": "backups", "persistentVolumeClaim": {"claimName": o.claim}})
        container["volumeMounts"] = [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "backups", "mountPath": store if store.startswith("/") else "/backups"},
        ]
    if o.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": o.s3_secret}}]
    meta = {"name": o.name, "namespace": o.namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": o.namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": o.name, "labels": labels},
            # Read-only: a backup lists and reads; it never creates, changes or deletes.
            "rules": [
                *(
                    {"apiGroups": [group], "resources": list(names), "verbs": ["get", "list"]}
                    for group, names in o.resources
                ),
                {
                    "nonResourceURLs": ["/version", "/api", "/api/*", "/apis", "/apis/*"],
                    "verbs": ["get"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": o.name, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": o.name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": o.name, "namespace": o.namespace}],
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta,
            "spec": {
                "schedule": o.schedule,
                "concurrencyPolicy": "Forbid",
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 1,
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "serviceAccountName": o.name,
                                "restartPolicy": "Never",
                                # the backup volume is writable by the non-root user
                                "securityContext": {"fsGroup": 65532},
                                "containers": [container],
                                "volumes": volumes,
                            },
                        },
                    }
                },
            },
        },
    ]
