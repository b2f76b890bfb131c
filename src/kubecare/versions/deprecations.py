"""Deprecated and removed APIs: the removals table, and reading the apiserver's signals.

The table is the "Deprecated API Migration Guide"
(https://kubernetes.io/docs/reference/using-api/deprecation-guide/), whose newest section is
v1.32; ``tests/unit/data/deprecation-guide-removals.txt`` holds its removal sentences and a unit
test checks this table against them. Later removals of beta APIs that are off by default are
not in the guide; the apiserver itself reports them in the metric's ``removed_release`` label.

The live signals (k8s.io/apiserver pkg/endpoints/metrics): the gauge
``apiserver_requested_deprecated_apis{group,version,resource,subresource,removed_release}`` is set
to 1 by each apiserver for every deprecated API a client has requested since that apiserver
started (so it is read from every instance, before it is upgraded), and a deprecated request is
answered with a ``Warning: 299 - "<text>"`` header. Custom resources served at a version marked
``deprecated: true`` have ``removed_release=""``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubecare.versions.semver import Version


@dataclass(frozen=True)
class Removal:
    removed_in: str  # "1.22"
    group: str  # "" for the core group
    version: str
    resource: str
    kind: str
    replacement: str  # group/version to use instead ("" when there is none)

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def _r(removed: str, gv: str, kinds: str, replacement: str) -> list[Removal]:
    group, _, version = gv.rpartition("/")
    out = []
    for pair in kinds.split(","):
        kind, resource = pair.strip().split("=")
        out.append(Removal(removed, group, version, resource, kind, replacement))
    return out


REMOVALS: tuple[Removal, ...] = tuple(
    _r("1.32", "flowcontrol.apiserver.k8s.io/v1beta3", "FlowSchema=flowschemas, PriorityLevelConfiguration=prioritylevelconfigurations", "flowcontrol.apiserver.k8s.io/v1")
    + _r("1.29", "flowcontrol.apiserver.k8s.io/v1beta2", "FlowSchema=flowschemas, PriorityLevelConfiguration=prioritylevelconfigurations", "flowcontrol.apiserver.k8s.io/v1")
    + _r("1.27", "storage.k8s.io/v1beta1", "CSIStorageCapacity=csistoragecapacities", "storage.k8s.io/v1")
    + _r("1.26", "flowcontrol.apiserver.k8s.io/v1beta1", "FlowSchema=flowschemas, PriorityLevelConfiguration=prioritylevelconfigurations", "flowcontrol.apiserver.k8s.io/v1beta2")
    + _r("1.26", "autoscaling/v2beta2", "HorizontalPodAutoscaler=horizontalpodautoscalers", "autoscaling/v2")
    + _r("1.25", "batch/v1beta1", "CronJob=cronjobs", "batch/v1")
    + _r("1.25", "discovery.k8s.io/v1beta1", "EndpointSlice=endpointslices", "discovery.k8s.io/v1")
    + _r("1.25", "events.k8s.io/v1beta1", "Event=events", "events.k8s.io/v1")
    + _r("1.25", "autoscaling/v2beta1", "HorizontalPodAutoscaler=horizontalpodautoscalers", "autoscaling/v2")
    + _r("1.25", "policy/v1beta1", "PodDisruptionBudget=poddisruptionbudgets", "policy/v1")
    + _r("1.25", "policy/v1beta1", "PodSecurityPolicy=podsecuritypolicies", "")
    + _r("1.25", "node.k8s.io/v1beta1", "RuntimeClass=runtimeclasses", "node.k8s.io/v1")
    + _r("1.22", "admissionregistration.k8s.io/v1beta1", "MutatingWebhookConfiguration=mutatingwebhookconfigurations, ValidatingWebhookConfiguration=validatingwebhookconfigurations", "admissionregistration.k8s.io/v1")
    + _r("1.22", "apiextensions.k8s.io/v1beta1", "CustomResourceDefinition=customresourcedefinitions", "apiextensions.k8s.io/v1")
    + _r("1.22", "apiregistration.k8s.io/v1beta1", "APIService=apiservices", "apiregistration.k8s.io/v1")
    + _r("1.22", "authentication.k8s.io/v1beta1", "TokenReview=tokenreviews", "authentication.k8s.io/v1")
    + _r("1.22", "authorization.k8s.io/v1beta1", "LocalSubjectAccessReview=localsubjectaccessreviews, SelfSubjectAccessReview=selfsubjectaccessreviews, SubjectAccessReview=subjectaccessreviews, SelfSubjectRulesReview=selfsubjectrulesreviews", "authorization.k8s.io/v1")
    + _r("1.22", "certificates.k8s.io/v1beta1", "CertificateSigningRequest=certificatesigningrequests", "certificates.k8s.io/v1")
    + _r("1.22", "coordination.k8s.io/v1beta1", "Lease=leases", "coordination.k8s.io/v1")
    + _r("1.22", "extensions/v1beta1", "Ingress=ingresses", "networking.k8s.io/v1")
    + _r("1.22", "networking.k8s.io/v1beta1", "Ingress=ingresses, IngressClass=ingressclasses", "networking.k8s.io/v1")
    + _r("1.22", "rbac.authorization.k8s.io/v1beta1", "ClusterRole=clusterroles, ClusterRoleBinding=clusterrolebindings, Role=roles, RoleBinding=rolebindings", "rbac.authorization.k8s.io/v1")
    + _r("1.22", "scheduling.k8s.io/v1beta1", "PriorityClass=priorityclasses", "scheduling.k8s.io/v1")
    + _r("1.22", "storage.k8s.io/v1beta1", "CSIDriver=csidrivers, CSINode=csinodes, StorageClass=storageclasses, VolumeAttachment=volumeattachments", "storage.k8s.io/v1")
    + _r("1.16", "extensions/v1beta1", "NetworkPolicy=networkpolicies", "networking.k8s.io/v1")
    + _r("1.16", "extensions/v1beta1", "DaemonSet=daemonsets", "apps/v1")
    + _r("1.16", "apps/v1beta2", "DaemonSet=daemonsets", "apps/v1")
    + _r("1.16", "extensions/v1beta1", "Deployment=deployments", "apps/v1")
    + _r("1.16", "apps/v1beta1", "Deployment=deployments", "apps/v1")
    + _r("1.16", "apps/v1beta2", "Deployment=deployments", "apps/v1")
    + _r("1.16", "apps/v1beta1", "StatefulSet=statefulsets", "apps/v1")
    + _r("1.16", "apps/v1beta2", "StatefulSet=statefulsets", "apps/v1")
    + _r("1.16", "extensions/v1beta1", "ReplicaSet=replicasets", "apps/v1")
    + _r("1.16", "apps/v1beta1", "ReplicaSet=replicasets", "apps/v1")
    + _r("1.16", "apps/v1beta2", "ReplicaSet=replicasets", "apps/v1")
    + _r("1.16", "extensions/v1beta1", "PodSecurityPolicy=podsecuritypolicies", "policy/v1beta1")
)  # fmt: skip


def removal_of(group: str, version: str, resource: str) -> Removal | None:
    for r in REMOVALS:
        if (r.group, r.version, r.resource) == (group, version, resource):
            return r
    return None


_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def _kube_version(v: str) -> tuple[int, int, int] | None:
    m = _KUBE_VERSION.match(v)
    if not m:
        return None
    kind = {"alpha": 0, "beta": 1, None: 2}[m[2]]
    return (kind, int(m[1]), int(m[3] or 0))


def compare_kube_aware(v1: str, v2: str) -> int:
    """apimachinery version.CompareKubeAwareVersionStrings: GA > beta > alpha, then the major,
    then the minor; non-Kubernetes-like names below those, in reverse alphabetical order."""
    if v1 == v2:
        return 0
    a, b = _kube_version(v1), _kube_version(v2)
    if a is None and b is None:
        return (v2 > v1) - (v2 < v1)
    if a is None:
        return -1
    if b is None:
        return 1
    if a[0] != b[0]:
        return a[0] - b[0]
    if a[1] != b[1]:
        return a[1] - b[1]
    return a[2] - b[2]


def crd_deprecation_warning(crd_spec: dict[str, Any], version: str) -> str:
    """The warning the apiserver sends for a deprecated CRD version: its ``deprecationWarning``,
    else apiextensions-apiserver's defaultDeprecationWarning (the newest served, non-deprecated
    version above it as the one to use)."""
    import functools

    versions = [v for v in crd_spec.get("versions") or [] if isinstance(v, dict)]
    for v in versions:
        if v.get("name") == version and v.get("deprecationWarning"):
            return str(v["deprecationWarning"])
    group = crd_spec.get("group", "")
    kind = (crd_spec.get("names") or {}).get("kind", "")
    msg = f"{group}/{version} {kind} is deprecated"
    newer = [
        str(v["name"])
        for v in versions
        if v.get("served")
        and not v.get("deprecated")
        and compare_kube_aware(version, str(v["name"])) < 0
    ]
    if not newer:
        return msg
    newer.sort(key=functools.cmp_to_key(compare_kube_aware), reverse=True)
    return msg + f"; use {group}/{newer[0]} {kind}"


METRIC = "apiserver_requested_deprecated_apis"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class DeprecatedUse:
    """A deprecated API some client requested (one metric series, or an object found stored)."""

    group: str
    version: str
    resource: str
    subresource: str
    removed_release: str  # "" when no removal is planned (and for custom resources)
    source: str  # the apiserver endpoint whose metric showed it, or "stored objects"
    warning: str = ""  # the apiserver's Warning header text for this API, when read

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def removed_by(self, target: Version) -> bool:
        """Whether the API is gone in ``target`` (the metric's label, else the guide's table)."""
        removed = self.removed_release or getattr(
            removal_of(self.group, self.version, self.resource), "removed_in", ""
        )
        if not removed:
            return False
        major, _, minor = removed.partition(".")
        return (target.major, target.minor) >= (int(major), int(minor))


def parse_metrics(text: str, source: str) -> list[DeprecatedUse]:
    """The deprecated-API series in a Prometheus text exposition (value 1 = requested)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(METRIC):
            continue
        m = _SAMPLE.match(line)
        if not m or m["name"] != METRIC:
            continue
        try:
            if float(m["value"]) <= 0:
                continue
        except ValueError:
            continue
        labels = {
            k: v.encode().decode("unicode_escape") for k, v in _LABEL.findall(m["labels"] or "")
        }
        out.append(
            DeprecatedUse(
                labels.get("group", ""),
                labels.get("version", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
                labels.get("removed_release", ""),
                source,
            )
        )
    return out


@dataclass(frozen=True)
class WarningHeader:
    code: int
    agent: str
    text: str


_CODE = re.compile(r"^[0-9]{3}$")


def _has_control(text: str) -> bool:
    import unicodedata

    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _invalid(text: str) -> bool:
    """Bytes that were not UTF-8 (kept as surrogates by :func:`header_text`)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _quoted(text: str) -> tuple[str, str]:
    """apimachinery's parseQuotedString: the unescaped string and what follows it."""
    if not text:
        raise ValueError("invalid quoted string: 0-length")
    if text[0] != '"':
        raise ValueError("invalid quoted string: missing initial quote")
    out: list[str] = []
    escaping = False
    for i, ch in enumerate(text[1:], 1):
        if ch == '"' and not escaping:
            return "".join(out), text[i + 1 :].strip()
        if ch == "\\" and not escaping:
            escaping = True
            continue
        out.append(ch)
        escaping = False
    raise ValueError("invalid quoted string: missing closing quote")


def _decode_rfc2047(text: str) -> str:
    """Go's mime.WordDecoder.DecodeHeader, as the apiserver's clients tolerate it: encoded
    words in charsets Python knows are decoded; anything else is left as it is."""
    import email.header

    if "=?" not in text:
        return text
    try:
        parts = email.header.decode_header(text)
        return "".join(p.decode(cs or "ascii") if isinstance(p, bytes) else p for p, cs in parts)
    except (LookupError, UnicodeDecodeError, ValueError):
        return text


def parse_warning_header(header: str) -> tuple[WarningHeader, str]:
    """One warning of a ``Warning`` header and the rest of it (apimachinery
    util/net ParseWarningHeader: ``code agent "text" ["date"][, ...]``)."""
    header = header.strip()
    parts = header.split(" ", 2)
    if len(parts) != 3:
        raise ValueError("invalid warning header: fewer than 3 segments")
    code, agent, rest = parts
    if not _CODE.match(code):
        raise ValueError("invalid warning header: code segment is not 3 digits between 100-299")
    if not agent:
        raise ValueError("invalid warning header: empty agent segment")
    if _has_control(agent) or _invalid(agent):
        raise ValueError("invalid warning header: invalid agent")
    if not rest:
        raise ValueError("invalid warning header: empty text segment")
    try:
        text, after = _quoted(rest)
    except ValueError as e:
        raise ValueError(f"invalid warning header: {e}") from None
    text = _decode_rfc2047(text)
    if _has_control(text) or _invalid(text):
        raise ValueError("invalid warning header: invalid text")
    remainder = ""
    if after:
        if after[0] == '"':
            end = after.find('"', 1)
            if end < 0:
                raise ValueError("invalid warning header: unterminated date segment")
            remainder = after[end + 1 :].strip()
        else:
            remainder = after
    if remainder:
        if remainder[0] != ",":
            raise ValueError("invalid warning header: unexpected token after warn-date")
        remainder = remainder[1:].strip()
    return WarningHeader(int(code), agent, text), remainder


def parse_warning_headers(headers: Iterable[str]) -> tuple[list[WarningHeader], list[str]]:
    """Every warning of several ``Warning`` headers (ParseWarningHeaders): a malformed one
    ends its header and is reported."""
    results: list[WarningHeader] = []
    errors: list[str] = []
    for header in headers:
        while header:
            try:
                result, header = parse_warning_header(header)
            except ValueError as e:
                errors.append(str(e))
                break
            results.append(result)
    return results, errors


def header_text(raw: str) -> str:
    """A header value as the HTTP layer read it (latin-1, byte for byte) back to UTF-8 text;
    bytes that are not UTF-8 are kept as surrogates, which the parser refuses as Go's
    utf8.ValidString check does (a real U+FFFD in the text is fine)."""
    return raw.encode("latin-1", errors="replace").decode("utf-8", errors="surrogateescape")


def parse_warnings(values: Iterable[str]) -> list[str]:
    """The texts of the 299 warnings, as client-go's warning handlers keep them (code 299,
    non-empty text)."""
    results, _ = parse_warning_headers(header_text(v) for v in values if v)
    return [w.text for w in results if w.code == 299 and w.text]
