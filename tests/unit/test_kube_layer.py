from __future__ import annotations

import pytest

from kubecare import errors
from kubecare.kube import http
from kubecare.kube.discovery import ApiResource, parse_aggregated, parse_resource_list
from kubecare.kube.errors import api_error, mapped


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.Invalid),
        (401, errors.Unauthorized),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (422, errors.Invalid),
        (429, errors.TooManyRequests),
        (500, errors.ServerError),
        (503, errors.ServerError),
    ],
)
def test_status_codes_map_to_one_tree(status: int, cls: type[errors.ApiError]) -> None:
    e = api_error(status, "boom", what='node "n1"')
    assert isinstance(e, cls) and isinstance(e, errors.KubecareError)
    assert "n1" in e.message


def test_not_found_names_the_object() -> None:
    assert api_error(404, "x", what='node "w9"').message == 'node "w9" not found'


def test_http_status_errors_are_translated_with_retry_after() -> None:
    resp = http.Response(429, {"retry-after": "3"}, b'{"message": "Cannot evict pod"}')
    with pytest.raises(errors.TooManyRequests) as info, mapped('pod "a/p"'):
        resp.raise_for_status()
    assert info.value.retry_after == 3.0
    assert "Cannot evict pod" in info.value.message


def test_transport_errors_become_unreachable() -> None:
    with (
        pytest.raises(errors.Unreachable, match="unreachable"),
        mapped("nodes", "https://127.0.0.1:1"),
    ):
        raise http.ConnectError("connection refused")
    with pytest.raises(errors.Unreachable, match="did not answer in time"), mapped("nodes"):
        raise http.ConnectTimeout("timed out")


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(ZeroDivisionError), mapped("x"):
        raise ZeroDivisionError


def test_aggregated_discovery_parses_preferred_versions() -> None:
    doc = {
        "kind": "APIGroupDiscoveryList",
        "items": [
            {
                "metadata": {"name": "apps"},
                "versions": [
                    {
                        "version": "v1",
                        "resources": [
                            {
                                "resource": "deployments",
                                "responseKind": {"kind": "Deployment"},
                                "scope": "Namespaced",
                                "verbs": ["get", "list"],
                            },
                        ],
                    },
                    {
                        "version": "v1beta1",
                        "resources": [{"resource": "old", "scope": "Namespaced"}],
                    },
                ],
            }
        ],
    }
    [res] = parse_aggregated(doc, core=False)
    assert res == ApiResource("apps", "v1", "deployments", "Deployment", True, ("get", "list"))
    assert res.path("ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert res.path() == "/apis/apps/v1/deployments"


def test_legacy_discovery_skips_subresources() -> None:
    doc = {
        "resources": [
            {"name": "nodes", "kind": "Node", "namespaced": False, "verbs": ["list"]},
            {"name": "nodes/status", "kind": "Node", "namespaced": False},
        ]
    }
    [res] = parse_resource_list(doc, "", "v1")
    assert res.path() == "/api/v1/nodes" and not res.namespaced


class _Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


class _Writer:
    def __init__(self) -> None:
        self.transport = _Transport()


def test_a_connection_opened_before_a_certificate_rotation_is_not_pooled_again() -> None:
    import ssl

    from kubecare.kube.http import HttpClient, _Conn

    old, new = ssl.create_default_context(), ssl.create_default_context()
    client = HttpClient("https://127.0.0.1:6443", ssl_context=old)
    in_flight = _Conn(None, _Writer(), context=old)  # type: ignore[arg-type]
    client.use_ssl_context(new)  # rotated while the request was out
    client._release(in_flight, True)
    assert client._idle == [] and in_flight.writer.transport.aborted  # type: ignore[attr-defined]
    current = _Conn(None, _Writer(), context=new)  # type: ignore[arg-type]
    client._release(current, True)
    assert client._idle == [current]


async def test_a_write_never_goes_down_a_connection_the_server_closed_while_the_loop_was_busy() -> (
    None
):
    """The server closes an idle kept-alive connection while the caller's event loop is blocked
    (so asyncio has not seen the FIN): a DELETE then must open a new connection, not be written
    to the dead one and fail unanswered (a write is never replayed)."""
    import socket
    import threading
    import time

    from kubecare.kube.http import HttpClient

    served: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:  # a server in its own thread: it runs while the caller's loop is stuck
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                served.append(head.split(b" ", 1)[0].decode())
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                time.sleep(0.05)  # an idle timeout: closed after one answer

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = HttpClient(f"http://127.0.0.1:{port}")
    try:
        assert (await client.get("/a")).status_code == 200
        time.sleep(0.3)  # a blocking caller: the server's FIN arrives while the loop is stuck
        assert (await client.delete("/b")).status_code == 200
        assert served == ["GET", "DELETE"]
    finally:
        await client.aclose()
        listener.close()
        thread.join(timeout=5)
