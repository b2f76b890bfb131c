"""The one exception tree of kubecare.

Every error a user can meet is a :class:`KubecareError`; its message is one line that names the
object and says what to do. The CLI prints ``error: <message>`` and exits 1 (2 for
:class:`UsageError`); no traceback reaches a user for an expected failure.

::

    KubecareError
     ├── UsageError                 bad flags or arguments (exit 2)
     ├── ConfigError                kubeconfig missing/unreadable, unknown context
     ├── ApiError                   the apiserver answered with an error
     │    ├── NotFound              404: the named object does not exist
     │    ├── Conflict              409: stale resourceVersion or the object already exists
     │    ├── TooManyRequests       429: throttled, or an eviction blocked by a PodDisruptionBudget
     │    ├── Forbidden             403: RBAC denies the verb
     │    ├── Unauthorized          401: credentials rejected or expired
     │    ├── Invalid               422 / 400: the server rejected the object
     │    └── ServerError           5xx
     ├── Unreachable                the apiserver could not be reached (connect/read timeout, refused)
     ├── TlsError                   the TLS handshake failed (certificate not valid for the address, unknown CA)
     ├── OperationFailed            an operation ran but did not reach its goal
     └── SandboxError               the local control plane could not be built, started or stopped
          └── BuildError            a ``go build`` step failed
"""

from __future__ import annotations


class KubecareError(Exception):
    """Base of every error kubecare raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(KubecareError):
    """Raised for invalid arguments: a bad selector, conflicting flags, a negative count."""

    exit_code = 2


class ConfigError(KubecareError):
    """Raised when no usable client configuration can be built (kubeconfig, context)."""


class ApiError(KubecareError):
    """Raised when the apiserver answers a request with an error status."""

    def __init__(self, message: str, *, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive pickling by default; a worker process raises
        # these too (backup pages), and the parent must get the same error back.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


class NotFound(ApiError):
    """Raised on 404: the named object (or the API that serves it) does not exist."""


class Conflict(ApiError):
    """Raised on 409: the object changed underneath us or already exists."""


class TooManyRequests(ApiError):
    """Raised on 429; ``retry_after`` is the server's Retry-After in seconds, if it sent one."""

    def __init__(
        self, message: str, *, status: int, reason: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.retry_after = retry_after


class Forbidden(ApiError):
    """Raised on 403: the credentials are valid but RBAC does not allow the request."""


class Unauthorized(ApiError):
    """Raised on 401: the credentials were rejected."""


class Invalid(ApiError):
    """Raised on 400/422: the server rejected what we sent."""


class ServerError(ApiError):
    """Raised on 5xx: the apiserver failed while handling the request."""


class Unreachable(KubecareError):
    """Raised when the apiserver cannot be reached within the connect timeout."""


class TlsError(KubecareError):
    """Raised when the TLS handshake with the apiserver fails: its certificate does not match the
    address or is signed by an unknown authority, or our client certificate was refused."""


class OperationFailed(KubecareError):
    """Raised when an operation ran but could not reach its goal (e.g. a node never became Ready)."""


class EtcdError(KubecareError):
    """Raised when etcd cannot be reached, rejects our certificates, or an RPC fails; and when the
    etcd settings of a control-plane node (its static pod manifest) cannot be worked out."""


class CertError(KubecareError):
    """Raised when a control plane's certificate or CA cannot be read or renewed."""


class SnapshotError(KubecareError):
    """Raised when an etcd snapshot (or bbolt data file) cannot be read: not a bbolt file,
    truncated, a bad SHA-256 trailer, pages that fail bbolt's consistency check."""


class SandboxError(KubecareError):
    """Raised when the sandbox control plane cannot be built, started, inspected or stopped."""


class BuildError(SandboxError):
    """Raised when a step of building the sandbox binaries fails; the message has its last output."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real failure in a (nested) exception group from a TaskGroup."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        return exc
    return group


def _rebuild(cls: type[KubecareError], message: str, state: dict[str, object]) -> KubecareError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


#: Errors of an apiserver that may answer again soon (restarting, throttling, unreachable): the
#: ones a long-running operation rides out until its own deadline.
TRANSIENT = (ServerError, TooManyRequests, Unreachable)
