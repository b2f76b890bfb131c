"""The sandbox nodes' container runtime, as far as kubeadm asks one.

``kubeadm upgrade apply`` and ``kubeadm upgrade node`` talk to the node's CRI socket
(``unix:///run/containerd/containerd.sock``) in their preflight: ContainerRuntimeVersion
(``Version``, ``RuntimeConfig``) and, on a control plane, ImagePull (``ImageStatus``, then
``PullImage`` for what is missing). A sandbox node has no containerd — the static pod runner runs
its control plane and kwok the rest — so the runner serves this small CRI on the sandbox's
``cri.sock``, and every node's view links it at containerd's path
(:mod:`kubecare.sandbox.nodeshell`).

What it answers is what the sandbox really has: an image of a control-plane component exists
when the sandbox has built that version's binary (the runner runs exactly those), and pulling one
that is not built fails with the runner's own reason (the ``kubecare sandbox build`` that builds
it, or that the sandbox cannot build that version) — so kubeadm stops in its own ImagePull
preflight check, before it changes anything. Images of pods
kwok runs (kube-proxy, CoreDNS, pause) need nothing and always exist. Every other call is
UNIMPLEMENTED, as gRPC answers a method a server lacks.

The messages are few and small, so they are encoded by hand from the field numbers of
k8s.io/cri-api/pkg/apis/runtime/v1/api.proto (no generated code).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

#: the control-plane images the runner runs (their binary must be built)
BUILT = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
RUNTIME_NAME = "kubecare-sandbox"
SOCKET = "cri.sock"  # in the sandbox's state dir
API_VERSION = "v1"


# -- protobuf wire format (proto3: varints and length-delimited fields only) -------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number: int, value: bytes | str) -> bytes:
    """A length-delimited field (string, bytes or an embedded message)."""
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def fields(data: bytes) -> dict[int, list[bytes | int]]:
    """Decode one message's fields: number -> values (bytes for length-delimited, int for
    varints). Fixed-width fields are skipped."""
    out: dict[int, list[bytes | int]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(data):
        key = varint()
        number, kind = key >> 3, key & 7
        if kind == 0:
            out.setdefault(number, []).append(varint())
        elif kind == 2:
            size = varint()
            if i + size > len(data):
                raise ValueError("truncated field")
            out.setdefault(number, []).append(data[i : i + size])
            i += size
        elif kind == 1:
            i += 8
        elif kind == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {kind}")
    return out


def image_of(request: bytes) -> str:
    """``ImageStatusRequest``/``PullImageRequest``: field 1 is an ImageSpec, whose field 1 is the
    image reference."""
    spec = fields(request).get(1, [b""])[0]
    ref = fields(spec if isinstance(spec, bytes) else b"").get(1, [b""])[0]
    return ref.decode() if isinstance(ref, bytes) else ""


# -- what the runtime has -------------------------------------------------------------------
def split_image(ref: str) -> tuple[str, str]:
    """``registry.k8s.io/kube-apiserver:v1.37.2`` -> (``kube-apiserver``, ``v1.37.2``)."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:  # no tag: "latest", as a runtime reads it
        name, tag = ref, "latest"
    return name.rsplit("/", 1)[-1].split("@")[0], tag


def lookup(ref: str, resolve: Callable[[str, str], str]) -> tuple[int, str]:
    """(size, why missing) of ``ref`` on the node: a control-plane component's image is its
    built binary (``resolve`` raises with the fix when it is not built); kwok's pods need none
    (size 1: the CRI client insists on one)."""
    component, tag = split_image(ref)
    if component not in BUILT:
        return 1, ""
    try:
        path = resolve(component, tag)
    except Exception as e:
        return 0, str(e)
    try:
        return os.path.getsize(path), ""
    except OSError as e:
        return 0, f"{path}: {e.strerror}"


def version_response(version: str) -> bytes:
    return field(1, "0.1.0") + field(2, RUNTIME_NAME) + field(3, version) + field(4, API_VERSION)


def status_response() -> bytes:
    conditions = [field(1, "RuntimeReady") + varint_field(2, 1)]
    conditions.append(field(1, "NetworkReady") + varint_field(2, 1))
    return field(1, b"".join(field(1, c) for c in conditions))


def image_status_response(ref: str, size: int) -> bytes:
    if not size:
        return b""  # no image field: not found (kubeadm then pulls it)
    digest = hashlib.sha256(ref.encode()).hexdigest()
    image = field(1, f"sha256:{digest}") + field(2, ref) + varint_field(4, size)
    return field(1, image)


def pull_response(ref: str) -> bytes:
    return field(1, ref)


def runtime_config_response() -> bytes:
    return field(1, b"")  # linux: cgroup driver systemd (the enum's zero), as kubeadm defaults


class Runtime:
    """The CRI methods, bytes in and out (gRPC's generic handlers call them)."""

    def __init__(self, resolve: Callable[[str, str], str], version: str = "v0.1.0") -> None:
        self.resolve = resolve
        self.version = version

    def handlers(self) -> Any:
        import grpc

        def unary(fn: Callable[[bytes, Any], Awaitable[bytes]]) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None
            )

        def constant(make: Callable[[], bytes]) -> Callable[[bytes, Any], Awaitable[bytes]]:
            async def answer(_request: bytes, _context: Any) -> bytes:
                return make()

            return answer

        runtime = grpc.method_handlers_generic_handler(
            "runtime.v1.RuntimeService",
            {
                "Version": unary(constant(lambda: version_response(self.version))),
                "Status": unary(constant(status_response)),
                "RuntimeConfig": unary(constant(runtime_config_response)),
            },
        )
        images = grpc.method_handlers_generic_handler(
            "runtime.v1.ImageService",
            {
                # the client's check that the image API is there: no file systems to report
                "ImageFsInfo": unary(constant(bytes)),
                "ImageStatus": unary(self.image_status),
                "PullImage": unary(self.pull),
            },
        )
        return [runtime, images]

    async def image_status(self, request: bytes, _context: Any) -> bytes:
        ref = image_of(request)
        return image_status_response(ref, lookup(ref, self.resolve)[0])

    async def pull(self, request: bytes, context: Any) -> bytes:
        import grpc

        ref = image_of(request)
        _, why = lookup(ref, self.resolve)
        if why:
            await context.abort(grpc.StatusCode.NOT_FOUND, why)
        return pull_response(ref)


async def serve(path: str, runtime: Runtime) -> Any:
    """Serve ``runtime`` on the unix socket ``path`` (relative to the cwd: socket paths are
    limited to 107 bytes, a sandbox's state dir can be long). Returns the started server."""
    import grpc

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(runtime.handlers())
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server
