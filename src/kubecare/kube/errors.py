"""Map client-layer failures (:mod:`kubecare.kube.http`, ssl) onto :mod:`kubecare.errors`.

Kept apart from the client so every request path (typed, raw, watch) maps errors one way.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from kubecare import errors
from kubecare.kube import http

_BY_STATUS: dict[int, type[errors.ApiError]] = {
    400: errors.Invalid,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    410: errors.Conflict,
    422: errors.Invalid,
    429: errors.TooManyRequests,
}


def api_error(
    status: int, message: str, *, what: str, reason: str = "", retry_after: float | None = None
) -> errors.ApiError:
    """The kubecare error for an HTTP error status on ``what`` (e.g. ``node "worker-1"``)."""
    if status == 404:
        text = f"{what} not found"
    elif status == 401:
        text = f"unauthorized for {what}: the credentials were rejected; check the kubeconfig user"
    elif status == 403:
        text = f"forbidden: {message or 'RBAC denies this request'} ({what})"
    else:
        text = f"{what}: {message or reason or f'HTTP {status}'}"
    if status == 429:
        return errors.TooManyRequests(text, status=status, reason=reason, retry_after=retry_after)
    cls = _BY_STATUS.get(status, errors.ServerError if status >= 500 else errors.ApiError)
    return cls(text, status=status, reason=reason)


def _retry_after(response: http.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def translate(exc: BaseException, *, what: str, server: str = "") -> errors.KubecareError | None:
    """Return the kubecare error for ``exc``, or None if it is not a client-layer failure."""
    if isinstance(exc, errors.KubecareError):
        return exc
    if isinstance(exc, http.StatusError):
        resp = exc.response
        message, reason = "", ""
        try:
            body = resp.json()
            if isinstance(body, dict):
                message = str(body.get("message", ""))
                reason = str(body.get("reason") or "")  # metav1.StatusReason: AlreadyExists, ...
        except ValueError:
            message = resp.text[:200]
        return api_error(
            resp.status_code, message, what=what, reason=reason, retry_after=_retry_after(resp)
        )
    where = f" at {server}" if server else ""
    if isinstance(exc, http.TimeoutError_):
        return errors.Unreachable(
            f"apiserver{where} did not answer in time ({type(exc).__name__}) while accessing {what}; "
            "check that the cluster is up and the kubeconfig server address is right"
        )
    tls = _tls_failure(exc)
    if tls is not None:
        return errors.TlsError(
            f"TLS problem with the apiserver{where} while accessing {what}: {tls}"
        )
    if isinstance(exc, http.TransportError):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return errors.Unreachable(
            f"apiserver{where} is unreachable ({detail}) while accessing {what}; "
            "check that the cluster is up and the kubeconfig server address is right"
        )
    return None


def _tls_failure(exc: BaseException) -> str | None:
    """What went wrong in the TLS handshake, with kubectl's hint; None if it was not TLS."""
    seen: BaseException | None = exc
    for _ in range(10):  # the cause chain, bounded
        if seen is None or isinstance(seen, ssl.SSLError):
            break
        seen = seen.__cause__ or seen.__context__
    if not isinstance(seen, ssl.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
            return None
        text = str(exc)
    elif isinstance(seen, ssl.SSLCertVerificationError):
        text = seen.verify_message or str(seen)
    else:
        text = str(seen)
    text = text.strip()
    lowered = text.lower()
    if "not valid for" in lowered or "mismatch" in lowered:
        return (
            f"the server's certificate is not valid for this address ({text}); connect through a "
            "name or address the certificate lists, or set tls-server-name in the kubeconfig cluster"
        )
    if "local issuer" in lowered or "self-signed" in lowered or "self signed" in lowered:
        return (
            f"the server's certificate is signed by an unknown authority ({text}); "
            "check certificate-authority(-data) of the kubeconfig cluster"
        )
    if "expired" in lowered:
        return (
            f"a certificate has expired ({text}); renew it (kubeadm certs renew) or fix the clock"
        )
    if "unknown ca" in lowered or "bad certificate" in lowered or "certificate required" in lowered:
        return f"the server refused our client certificate ({text}); check the kubeconfig user"
    return f"{text or type(exc).__name__}; check the kubeconfig's certificates"


@contextmanager
def mapped(what: str, server: str = "") -> Iterator[None]:
    """Re-raise client-layer failures inside the block as kubecare errors naming ``what``."""
    try:
        yield
    except Exception as exc:
        mapped_exc = translate(exc, what=what, server=server)
        if mapped_exc is None or mapped_exc is exc:
            raise
        raise mapped_exc from exc
