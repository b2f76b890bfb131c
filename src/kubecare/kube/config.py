"""Client configuration the way kubectl finds it.

Order: ``--kubeconfig`` (one or more files), else ``$KUBECONFIG`` (a path list, merged like kubectl:
the first file to define a name wins, the first ``current-context`` wins), else ``~/.kube/config``,
else the in-cluster service account. Relative paths inside a file are resolved against that file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError

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


@dataclass(frozen=True)
class ClientOptions:
    """Where to find the cluster: the kubectl-style global options."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 30.0


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
                name = entry.get("name")
                if not name or name in seen[plural]:
                    continue
                seen[plural].add(name)
                merged[plural].append(_absolutise(section, entry, path.parent))
    return merged


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"kubeconfig {path} does not exist; pass --kubeconfig or set KUBECONFIG"
        ) from None
    except PermissionError:
        raise ConfigError(f"kubeconfig {path} is not readable (permission denied)") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            f"kubeconfig {path} is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a kubeconfig (expected a mapping)")
    return doc


def load_config(options: ClientOptions) -> SingleConfig:
    """Build the connection config for ``options``, or raise :class:`ConfigError` naming the fix."""
    paths = kubeconfig_paths(options.kubeconfig)
    if not paths:
        sa_dir = service_account_dir()
        if (sa_dir / "token").exists():
            try:
                in_cluster = KubeConfig.from_service_account(service_account=sa_dir).get()
            except LightkubeConfigError as e:
                raise ConfigError(f"in-cluster service account config is unusable: {e}") from None
            except KeyError as e:
                raise ConfigError(
                    f"in-cluster config needs ${e.args[0]} (set in every pod); outside a pod pass --kubeconfig"
                ) from None
            if in_cluster is None:
                raise ConfigError("in-cluster service account config has no context")
            return _with_namespace(in_cluster, options.namespace)
        raise ConfigError(
            "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config "
            "(for the sandbox: eval $(kubecare sandbox env))"
        )
    merged = merge_kubeconfigs([(p, _read(p)) for p in paths])
    context = options.context or merged.get("current-context")
    names = [c.get("name") for c in merged["contexts"]]
    if not context:
        raise ConfigError(
            f"kubeconfig {paths[0]} has no current-context; pass --context (one of: {', '.join(map(str, names)) or 'none'})"
        )
    if context not in names:
        raise ConfigError(
            f"context {context!r} not found in {', '.join(map(str, paths))}; known contexts: {', '.join(map(str, names)) or 'none'}"
        )
    try:
        single = KubeConfig.from_dict(merged, fname=paths[0]).get(context_name=context)
    except (LightkubeConfigError, KeyError, TypeError) as e:
        raise ConfigError(f"kubeconfig context {context!r} is incomplete: {e}") from None
    if single is None:
        raise ConfigError(f"context {context!r} could not be loaded")
    return _with_namespace(single, options.namespace)


def _with_namespace(config: SingleConfig, namespace: str | None) -> SingleConfig:
    if not namespace:
        return config
    return config._replace(context=msgspec.structs.replace(config.context, namespace=namespace))
