"""From a :class:`~kubecare.kube.config.Connection` to an authenticated HTTP client
(:class:`~kubecare.kube.http.HttpClient`).

TLS: the cluster's CA (or the system store), ``insecure-skip-tls-verify``, ``tls-server-name``
(SNI and the name the certificate must carry) and client certificates. Credentials: a static
token, a token file re-read as it rotates, basic auth, or an exec credential plugin
(client.authentication.k8s.io v1 and v1beta1) whose credential is cached until its
``expirationTimestamp`` and fetched again when the server answers 401 — what client-go does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kubecare import __version__
from kubecare.errors import ConfigError
from kubecare.kube.config import Connection, ExecConfig
from kubecare.kube.http import Credentials, HttpClient

#: A certificate-only exec credential fetched this recently answers every 401 of its old one.
CERT_REFRESH_GRACE = 2.0
USER_AGENT = f"kubecare/{__version__} ({sys.platform}/{os.uname().machine})"


@dataclass(frozen=True)
class ExecCredential:
    """What an exec plugin returned."""

    token: str | None
    cert_data: bytes | None
    key_data: bytes | None
    expires: float | None  # epoch seconds; None: valid until the server says otherwise


def ssl_context(conn: Connection, cert: bytes | None, key: bytes | None) -> ssl.SSLContext:
    """The TLS context for ``conn`` with an optional client certificate (PEM)."""
    if conn.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(cadata=conn.ca_data.decode() if conn.ca_data else None)
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"certificate-authority of context {conn.context_name!r} is not a PEM certificate ({e})"
            ) from None
    if cert or key:
        if not (cert and key):
            raise ConfigError(
                f"context {conn.context_name!r} has a client certificate without its key (or the reverse)"
            )
        _load_pair(ctx, cert, key, conn.context_name)
    return ctx


def _load_pair(ctx: ssl.SSLContext, cert: bytes, key: bytes, context: str) -> None:
    # ssl only loads a key pair from files: write them to a private directory for the moment.
    with tempfile.TemporaryDirectory(prefix="kubecare-") as d:
        cert_path, key_path = Path(d) / "tls.crt", Path(d) / "tls.key"
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as e:
            raise ConfigError(
                f"client certificate of context {context!r} does not load ({e.reason or e}); "
                "check client-certificate and client-key"
            ) from None


def run_exec_plugin(exec_cfg: ExecConfig, conn: Connection) -> ExecCredential:
    """Run the credential plugin once and parse its ExecCredential (blocking).

    ``$KUBECARE_NONINTERACTIVE`` (set by shell completion) keeps a plugin from prompting and
    bounds it to a few seconds: a TAB must never hang on an invisible login prompt."""
    quiet = bool(os.environ.get("KUBECARE_NONINTERACTIVE"))
    interactive = sys.stdin.isatty() and not quiet
    if exec_cfg.interactive_mode == "Always" and not interactive:
        raise ConfigError(
            f"exec plugin {exec_cfg.command} needs an interactive terminal (interactiveMode: Always)"
        )
    use_stdin = interactive and exec_cfg.interactive_mode != "Never"
    spec: dict[str, object] = {}
    if exec_cfg.provide_cluster_info:
        spec["cluster"] = exec_cluster_info(conn)
    spec["interactive"] = use_stdin
    # Byte for byte what client-go sets (its JSON encoder ends with a newline).
    info = (
        json.dumps(
            {"kind": "ExecCredential", "apiVersion": exec_cfg.api_version, "spec": spec},
            separators=(",", ":"),
        )
        + "\n"
    )
    env = {**os.environ, **dict(exec_cfg.env), "KUBERNETES_EXEC_INFO": info}
    try:
        proc = subprocess.run(
            [exec_cfg.command, *exec_cfg.args],
            env=env,
            stdin=None if use_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,  # it talks to the user on stderr
            timeout=5 if quiet else 300,
            check=False,
        )
    except FileNotFoundError:
        hint = f"; {exec_cfg.install_hint.strip()}" if exec_cfg.install_hint else ""
        raise ConfigError(
            f"exec plugin {exec_cfg.command!r} not found (context {conn.context_name!r}){hint}"
        ) from None
    except PermissionError:
        raise ConfigError(f"exec plugin {exec_cfg.command!r} is not executable") from None
    except subprocess.TimeoutExpired as e:
        raise ConfigError(
            f"exec plugin {exec_cfg.command!r} did not answer within {e.timeout:g}s"
        ) from None
    if proc.returncode != 0:
        raise ConfigError(
            f"exec plugin {exec_cfg.command!r} failed with exit code {proc.returncode} "
            f"(context {conn.context_name!r})"
        )
    return parse_exec_credential(proc.stdout, exec_cfg)


def exec_cluster_info(conn: Connection) -> dict[str, object]:
    """``spec.cluster`` of the ExecCredential, in client-go's field order and omissions
    (rest.ConfigToExecCluster): ``server`` and ``config`` always, the rest when set."""
    out: dict[str, object] = {"server": conn.server}
    if conn.tls_server_name:
        out["tls-server-name"] = conn.tls_server_name
    if conn.insecure:
        out["insecure-skip-tls-verify"] = True
    if conn.ca_data:
        out["certificate-authority-data"] = base64.b64encode(conn.ca_data).decode()
    if conn.proxy_url:
        out["proxy-url"] = conn.proxy_url
    extension = None
    for ext in conn.cluster.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == "client.authentication.k8s.io/exec":
            extension = ext.get("extension")
    out["config"] = extension
    return out


def parse_exec_credential(stdout: bytes, exec_cfg: ExecConfig) -> ExecCredential:
    """Pure: the plugin's stdout -> the credential, checked like client-go checks it."""
    name = exec_cfg.command
    try:
        doc = json.loads(stdout)
    except ValueError:
        raise ConfigError(
            f"exec plugin {name!r} did not print an ExecCredential (not JSON)"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
        raise ConfigError(f"exec plugin {name!r} did not print an ExecCredential")
    if doc.get("apiVersion") != exec_cfg.api_version:
        raise ConfigError(
            f"exec plugin {name!r} answered {doc.get('apiVersion')!r}, expected {exec_cfg.api_version!r}"
        )
    status = doc.get("status") or {}
    token = status.get("token") or None
    cert = status.get("clientCertificateData") or None
    key = status.get("clientKeyData") or None
    if not token and not (cert and key):
        raise ConfigError(
            f"exec plugin {name!r} returned neither a token nor a client certificate and key"
        )
    if bool(cert) != bool(key):
        raise ConfigError(f"exec plugin {name!r} returned a client certificate without its key")
    expires = None
    if status.get("expirationTimestamp"):
        try:
            expires = datetime.fromisoformat(
                str(status["expirationTimestamp"]).replace("Z", "+00:00")
            ).timestamp()
        except ValueError:
            raise ConfigError(
                f"exec plugin {name!r} returned a malformed expirationTimestamp"
            ) from None
    return ExecCredential(
        token=token,
        cert_data=cert.encode() if cert else None,
        key_data=key.encode() if key else None,
        expires=expires,
    )


class KubeAuth(Credentials):
    """The connection's credentials for every request; exec and file tokens are refreshed."""

    def __init__(
        self,
        conn: Connection,
        first: ExecCredential | None = None,
        on_certificate: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        self.conn = conn
        self._exec = first
        self._exec_fetched = time.monotonic() if first is not None else 0.0
        self.on_certificate = on_certificate  # a plugin handed out a new client certificate
        self._file_token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    def can_refresh(self) -> bool:
        return bool(self.conn.exec or self.conn.token_file)

    def _token_from_file(self, refresh: bool) -> str:
        assert self.conn.token_file
        now = time.monotonic()
        if self._file_token and not refresh and now - self._file_token[1] < 60:
            return self._file_token[0]
        try:
            token = Path(self.conn.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(
                f"token file {self.conn.token_file} is unreadable: {e.strerror}"
            ) from None
        self._file_token = (token, now)
        return token

    async def _exec_token(self, *, refused: bool, refused_token: str | None) -> str | None:
        assert self.conn.exec
        async with self._lock:
            cred = self._exec
            stale = cred is None or (cred.expires is not None and cred.expires - time.time() < 10)
            # A 401 for the token we hold now means it is bad; for an older one, another request
            # has already fetched a new one. A certificate-only credential has no token to tell
            # them apart: the 401s of requests sent with the old certificate arrive together, so
            # one fetched in the last seconds is taken as the answer to them.
            recent = time.monotonic() - self._exec_fetched < CERT_REFRESH_GRACE
            refused_ours = cred is not None and (
                cred.token == refused_token if cred.token is not None else not recent
            )
            if stale or (refused and (cred is None or refused_ours)):
                cred = await asyncio.to_thread(run_exec_plugin, self.conn.exec, self.conn)
                self._exec = cred
                self._exec_fetched = time.monotonic()
                if cred.cert_data and cred.key_data and self.on_certificate is not None:
                    self.on_certificate(cred.cert_data, cred.key_data)
            return cred.token if cred else None

    async def headers(self, *, refused: Mapping[str, str] | None = None) -> dict[str, str]:
        conn = self.conn
        refused_token = None
        if refused is not None:
            refused_token = refused.get("Authorization", "").removeprefix("Bearer ") or None
        if conn.token:
            token: str | None = conn.token
        elif conn.token_file:
            token = self._token_from_file(refused is not None)
        elif conn.exec:
            token = await self._exec_token(refused=refused is not None, refused_token=refused_token)
        elif conn.username is not None:
            raw = f"{conn.username}:{conn.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        else:
            token = None
        return {"Authorization": f"Bearer {token}"} if token else {}


def build_client(conn: Connection, *, connect_timeout: float, request_timeout: float) -> HttpClient:
    """The HTTP client for ``conn`` (blocking: an exec plugin that returns certificates runs now)."""
    cert, key = conn.cert_data, conn.key_data
    first: ExecCredential | None = None
    if conn.exec and not (cert and key) and not conn.token:
        # A plugin may hand out client certificates, which must be in the TLS context from the
        # start; so it runs once here, and its token (if any) is reused for the first requests.
        first = run_exec_plugin(conn.exec, conn)
        if first.cert_data and first.key_data:
            cert, key = first.cert_data, first.key_data
    https = conn.server.startswith("https://")
    auth = KubeAuth(conn, first)
    client = HttpClient(
        conn.server,
        ssl_context=ssl_context(conn, cert, key) if https else None,
        server_hostname=conn.tls_server_name,
        proxy=conn.proxy_url,
        connect_timeout=connect_timeout,
        read_timeout=request_timeout,
        headers={"User-Agent": USER_AGENT},
        credentials=auth,
    )
    if https:
        # A certificate-issuing plugin rotates its certificate: new connections present the new one.
        auth.on_certificate = lambda c, k: client.use_ssl_context(ssl_context(conn, c, k))
    return client
