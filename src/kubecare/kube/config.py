"""Client configuration the way kubectl finds it.

Order: ``--kubeconfig`` (one or more files), else ``$KUBECONFIG`` (a path list, merged like kubectl:
the first file to define a name wins, the first ``current-context`` wins), else ``~/.kube/config``,
else the in-cluster service account. Relative paths inside a file are resolved against that file.

The result is a :class:`Connection`: the server, TLS material and credentials of one context, as
plain data. :mod:`kubecare.kube.auth` turns it into an HTTP client.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubecare.errors import ConfigError

DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def service_account_dir() -> Path:
    """Where a pod's service-account token is mounted ($KUBECARE_SERVICE_ACCOUNT_DIR overrides it,
    e.g. for a token mounted elsewhere)."""
    return Path(os.environ.get("KUBECARE_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)


# Keys whose values are file paths, per section; kubectl resolves them relative to the file.
_PATH_KEYS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}

# kubectl's removed auth providers and the exec plugins that replaced them.
AUTH_PROVIDER_PLUGINS = {
    "gcp": "gke-gcloud-auth-plugin (https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl)",
    "azure": "kubelogin (https://azure.github.io/kubelogin/)",
    "oidc": "kubelogin (kubectl oidc-login, https://github.com/int128/kubelogin)",
}


@dataclass(frozen=True)
class ClientOptions:
    """Where to find the cluster: the kubectl-style global options."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    # A watch is ended by the server after this many seconds and started again; a connection
    # silent for longer than this (plus slack) is treated as dead, so a half-open TCP connection
    # never hangs a drain.
    watch_timeout: float = 60.0
    # How this process reaches the apiserver instances the cluster names (the advertise
    # endpoints on kubeadm's mirror pods): ``host:port`` as named -> ``host:port`` to dial.
    # Empty: as named. A sandbox's nodes are reached through its forwarded loopback ports.
    addresses: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ExecConfig:
    """A client-go credential plugin (``users[].user.exec``)."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"
    interactive_mode: str = "IfAvailable"  # Never, IfAvailable, Always
    provide_cluster_info: bool = False
    install_hint: str = ""


@dataclass(frozen=True)
class Connection:
    """Everything needed to talk to one cluster as one user (a resolved kubeconfig context)."""

    server: str
    context_name: str = ""
    namespace: str = "default"
    ca_data: bytes | None = None  # PEM; None: the system trust store
    insecure: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = None
    cert_data: bytes | None = None  # PEM client certificate ...
    key_data: bytes | None = None  # ... and its key
    token: str | None = None
    token_file: str | None = None  # re-read as it rotates (service accounts, projected tokens)
    username: str | None = None
    password: str | None = None
    exec: ExecConfig | None = None
    cluster: dict[str, Any] = field(default_factory=dict)  # raw, for provideClusterInfo
    source: str = ""  # where it came from, for messages


def kubeconfig_paths(explicit: str | None) -> list[Path]:
    """The kubeconfig files to merge, in precedence order (existing files only for $KUBECONFIG)."""
    if explicit:
        return [Path(p).expanduser() for p in explicit.split(os.pathsep) if p]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [
            Path(p).expanduser()
            for p in env.split(os.pathsep)
            if p and Path(p).expanduser().exists()
        ]
    return [DEFAULT_KUBECONFIG] if DEFAULT_KUBECONFIG.exists() else []


def _absolutise(section: str, entry: dict[str, Any], base: Path) -> dict[str, Any]:
    body = dict(entry.get(section) or {})
    for key in _PATH_KEYS.get(section, ()):
        value = body.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            body[key] = str((base / value).resolve())
    if section == "user" and isinstance(body.get("exec"), dict):
        # client-go resolves a relative exec command (containing a slash) against the file too.
        exec_cfg = dict(body["exec"])
        cmd = exec_cfg.get("command")
        if isinstance(cmd, str) and "/" in cmd and not os.path.isabs(cmd):
            exec_cfg["command"] = str((base / cmd).resolve())
        body["exec"] = exec_cfg
    return {**entry, section: body}


def merge_kubeconfigs(documents: Sequence[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Merge parsed kubeconfig files like kubectl: first definition of a name wins."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    seen: dict[str, set[str]] = {"clusters": set(), "contexts": set(), "users": set()}
    singular = {"clusters": "cluster", "contexts": "context", "users": "user"}
    for path, doc in documents:
        if not merged.get("current-context") and doc.get("current-context"):
            merged["current-context"] = doc["current-context"]
        for plural, section in singular.items():
            for entry in doc.get(plural) or []:
                if not isinstance(entry, dict):
                    continue
                name = entry.get("name")
                if not name or name in seen[plural]:
                    continue
                seen[plural].add(name)
                merged[plural].append(_absolutise(section, entry, path.parent))
    return merged


def _read(path: Path) -> dict[str, Any]:
    import yaml  # only commands that connect pay for it

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"kubeconfig {path} does not exist; pass --kubeconfig or set KUBECONFIG"
        ) from None
    except PermissionError:
        raise ConfigError(f"kubeconfig {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"kubeconfig {path} is a directory, not a file") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            f"kubeconfig {path} is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a kubeconfig (expected a mapping)")
    _check_shape(doc, path)
    return doc


def _check_shape(doc: dict[str, Any], path: Path) -> None:
    """The types client-go's decoder insists on (kubectl refuses a file with a list where a
    string belongs: "cannot unmarshal"), checked before anything reads the file."""

    def bad(where: str, kind: str) -> ConfigError:
        return ConfigError(
            f"kubeconfig {path}: {where} is not {kind}; fix the file (kubectl refuses it too)"
        )

    if not isinstance(doc.get("current-context") or "", str):
        raise bad("current-context", "a string")
    for plural, section in (("clusters", "cluster"), ("contexts", "context"), ("users", "user")):
        entries = doc.get(plural) or []
        if not isinstance(entries, list):
            raise bad(plural, "a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise bad(f"{plural}[{i}]", "a mapping")
            if not isinstance(entry.get("name") or "", str):
                raise bad(f"{plural}[{i}].name", "a string")
            body = entry.get(section) or {}
            if not isinstance(body, dict):
                raise bad(f"{plural}[{i}].{section}", "a mapping")
            for key, value in body.items():
                kind = _FIELDS[section].get(key)
                if value is None or kind is None:
                    continue  # client-go's decoder ignores fields it does not know
                if not isinstance(value, kind):
                    what = "a single value" if kind is _SCALAR else f"a {kind.__name__}"
                    raise bad(f"{plural}[{i}].{section}.{key}", what)


_SCALAR = (str, bool, int, float)
#: the fields of client-go's api/v1 Cluster, Context and AuthInfo, and their JSON types
_FIELDS: dict[str, dict[str, Any]] = {
    "cluster": {
        **dict.fromkeys(
            ("server", "tls-server-name", "insecure-skip-tls-verify", "certificate-authority",
             "certificate-authority-data", "proxy-url", "disable-compression"), _SCALAR),
        "extensions": list,
    },
    "context": {**dict.fromkeys(("cluster", "user", "namespace"), _SCALAR), "extensions": list},
    "user": {
        **dict.fromkeys(
            ("client-certificate", "client-certificate-data", "client-key", "client-key-data",
             "token", "tokenFile", "as", "as-uid", "username", "password"), _SCALAR),
        "exec": dict,
        "auth-provider": dict,
        "as-groups": list,
        "as-user-extra": dict,
        "extensions": list,
    },
}  # fmt: skip


def load_connection(options: ClientOptions) -> Connection:
    """The connection for ``options``, or :class:`ConfigError` naming the fix."""
    paths = kubeconfig_paths(options.kubeconfig)
    if not paths:
        sa_dir = service_account_dir()
        if (sa_dir / "token").exists():
            return _with_namespace(in_cluster(sa_dir), options.namespace)
        raise ConfigError(
            "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config "
            "(for the sandbox: eval $(kubecare sandbox env))"
        )
    merged = merge_kubeconfigs([(p, _read(p)) for p in paths])
    return _with_namespace(
        from_kubeconfig(merged, options.context, source=", ".join(map(str, paths))),
        options.namespace,
    )


def context_names(kubeconfig: str | None) -> list[str]:
    """The contexts of the merged kubeconfig (``--kubeconfig``, $KUBECONFIG or ~/.kube/config),
    in file order: what a fleet is chosen from."""
    paths = kubeconfig_paths(kubeconfig)
    if not paths:
        raise ConfigError(
            "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config"
        )
    merged = merge_kubeconfigs([(p, _read(p)) for p in paths])
    return [
        str(c["name"])
        for c in merged.get("contexts") or []
        if isinstance(c, dict) and c.get("name")
    ]


def from_kubeconfig(merged: dict[str, Any], context: str | None, *, source: str) -> Connection:
    """Pure: resolve ``context`` (default: current-context) of a merged kubeconfig."""
    context = context or merged.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in merged.get("contexts") or []}
    names = ", ".join(map(str, contexts)) or "none"
    if not context:
        raise ConfigError(
            f"kubeconfig {source} has no current-context; pass --context (one of: {names})"
        )
    if context not in contexts:
        raise ConfigError(f"context {context!r} not found in {source}; known contexts: {names}")
    ctx = contexts[context]
    clusters = {c.get("name"): c.get("cluster") or {} for c in merged.get("clusters") or []}
    users = {u.get("name"): u.get("user") or {} for u in merged.get("users") or []}
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if cluster_name not in clusters:
        raise ConfigError(
            f"context {context!r} refers to cluster {cluster_name!r}, which {source} does not define"
        )
    if user_name and user_name not in users:
        raise ConfigError(
            f"context {context!r} refers to user {user_name!r}, which {source} does not define"
        )
    cluster, user = clusters[cluster_name], users.get(user_name, {})
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(
            f"cluster {cluster_name!r} in {source} has no usable server URL ({server or 'none'}); "
            "expected e.g. https://10.0.0.1:6443"
        )
    where = f"user {user_name!r} in {source}"
    if cluster.get("insecure-skip-tls-verify") and (
        cluster.get("certificate-authority") or cluster.get("certificate-authority-data")
    ):
        # client-go refuses this combination too: the CA would be silently ignored.
        raise ConfigError(
            f"cluster {cluster_name!r} in {source} sets both insecure-skip-tls-verify and a "
            "certificate-authority; remove one of them"
        )
    if any(user.get(k) for k in ("as", "as-uid", "as-groups", "as-user-extra")):
        # kubectl would act as the impersonated user; acting as the real one instead would do
        # what that user may, not what the kubeconfig asks for.
        raise ConfigError(
            f"{where} impersonates another user (as/as-groups), which kubecare does not "
            "support; use a kubeconfig with that user's own credentials"
        )
    if "auth-provider" in user:
        provider = str((user.get("auth-provider") or {}).get("name", "?"))
        plugin = AUTH_PROVIDER_PLUGINS.get(provider, "the exec credential plugin of your provider")
        raise ConfigError(
            f"{where} uses auth-provider {provider!r}, which kubectl removed in 1.26; "
            f"switch the user to an exec plugin: {plugin}"
        )
    return Connection(
        server=server.rstrip("/"),
        context_name=str(context),
        namespace=str(ctx.get("namespace") or "default"),
        ca_data=_pem(cluster, "certificate-authority", f"cluster {cluster_name!r}"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name") or None,
        proxy_url=cluster.get("proxy-url") or None,
        cert_data=_pem(user, "client-certificate", where),
        key_data=_pem(user, "client-key", where),
        token=user.get("token") or None,
        token_file=user.get("tokenFile") or None,
        username=user.get("username") or None,
        password=user.get("password") or None,
        exec=_exec_config(user.get("exec"), where),
        cluster=dict(cluster),
        source=source,
    )


def _pem(section: dict[str, Any], key: str, where: str) -> bytes | None:
    """``key-data`` (base64) or the file named by ``key``."""
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data, validate=False)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {key}-data is not valid base64") from None
    path = section.get(key)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {key} {path}: {e.strerror}") from None


def _exec_config(raw: Any, where: str) -> ExecConfig | None:
    if not raw:
        return None
    if not isinstance(raw, dict) or not raw.get("command"):
        raise ConfigError(f"{where}: exec needs a command")
    api_version = str(raw.get("apiVersion") or "")
    if api_version not in (
        "client.authentication.k8s.io/v1",
        "client.authentication.k8s.io/v1beta1",
    ):
        raise ConfigError(
            f"{where}: exec apiVersion {api_version or '(none)'!r} is not supported; "
            "use client.authentication.k8s.io/v1 (or v1beta1)"
        )
    mode = str(raw.get("interactiveMode") or "")
    if api_version.endswith("/v1") and not mode:
        # client-go: interactiveMode is required in v1.
        raise ConfigError(
            f"{where}: exec interactiveMode must be set (Never, IfAvailable or Always)"
        )
    if mode and mode not in ("Never", "IfAvailable", "Always"):
        raise ConfigError(
            f"{where}: exec interactiveMode {mode!r} must be Never, IfAvailable or Always"
        )
    env = tuple(
        (str(e.get("name")), str(e.get("value", "")))
        for e in raw.get("env") or []
        if isinstance(e, dict) and e.get("name")
    )
    return ExecConfig(
        command=str(raw["command"]),
        args=tuple(str(a) for a in raw.get("args") or ()),
        env=env,
        api_version=api_version,
        interactive_mode=mode or "IfAvailable",
        provide_cluster_info=bool(raw.get("provideClusterInfo")),
        install_hint=str(raw.get("installHint") or ""),
    )


def in_cluster(sa_dir: Path) -> Connection:
    """The service account a pod runs as (token, CA and namespace mounted in ``sa_dir``)."""
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port:
        missing = "KUBERNETES_SERVICE_HOST" if not host else "KUBERNETES_SERVICE_PORT"
        raise ConfigError(
            f"in-cluster config needs ${missing} (set in every pod); outside a pod pass --kubeconfig"
        )
    if ":" in host:
        host = f"[{host}]"
    ca = sa_dir / "ca.crt"
    ns_file = sa_dir / "namespace"
    try:
        namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
        ca_data = ca.read_bytes() if ca.exists() else None
    except OSError as e:
        raise ConfigError(f"in-cluster service account in {sa_dir} is unreadable: {e}") from None
    return Connection(
        server=f"https://{host}:{port}",
        context_name="in-cluster",
        namespace=namespace or "default",
        ca_data=ca_data,
        token_file=str(sa_dir / "token"),
        source=f"in-cluster service account ({sa_dir})",
    )


def _with_namespace(conn: Connection, namespace: str | None) -> Connection:
    return replace(conn, namespace=namespace) if namespace else conn


def shadowed(kubeconfig: str | None, contexts: list[str]) -> list[str]:
    """Where kubectl's merge (the first file to name a user or a cluster wins) gives a chosen
    context another file's user or cluster: each such name, said once. A fleet must know,
    since those contexts would reach their clusters with another cluster's credentials."""
    paths = kubeconfig_paths(kubeconfig)
    owners: dict[tuple[str, str], list[Path]] = {}
    uses: dict[Path, set[tuple[str, str]]] = {}
    for path in paths:
        doc = _read(path)
        for section in ("users", "clusters"):
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and entry.get("name"):
                    owners.setdefault((section, str(entry["name"])), []).append(path)
        for ctx in doc.get("contexts") or []:
            if isinstance(ctx, dict) and ctx.get("name") in contexts:
                body = ctx.get("context") or {}
                uses.setdefault(path, set()).update(
                    {
                        ("users", str(body.get("user", ""))),
                        ("clusters", str(body.get("cluster", ""))),
                    }
                )
    out = []
    for (section, name), files in owners.items():
        if len(files) < 2:
            continue
        losers = [f for f in files[1:] if (section, name) in uses.get(f, set())]
        if losers:
            kind = section.rstrip("s")
            out.append(
                f"{kind} {name!r} is defined in {files[0]} and in {', '.join(map(str, losers))}: "
                f"kubectl's merge gives every context the first one; rename it in one file, or "
                "give each cluster its own kubeconfig in a fleet file"
            )
    return out
