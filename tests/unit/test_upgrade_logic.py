"""Upgrades and versions, pure logic: each table is ported from the source it mirrors.

- k8s.io/apimachinery util/version TestSemanticVersions / TestBadSemanticVersions;
- kubeadm phases/upgrade/policy_test.go TestEnforceVersionPolicies (the 20 cases; kubecare
  diverges where the case is about the kubeadm binary, which kubecare does not check, and
  refuses downgrades; each divergence says so);
- kubeadm preflight/checks_test.go TestKubeletVersionCheck;
- kubeadm constants_test.go TestEtcdSupportedVersion (the fallback to the nearest minor);
- the version skew policy's own examples (kubernetes.io/releases/version-skew-policy);
- apimachinery util/net TestParseWarningHeader;
- the deprecation guide's removal sentences (tests/unit/data/deprecation-guide-removals.txt).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

from kubecare.errors import OperationFailed, UsageError
from kubecare.upgrade import executors as ex
from kubecare.upgrade.journal import Journal, NodeRecord
from kubecare.upgrade.plan import (
    CONTROL_PLANE,
    FIRST_CONTROL_PLANE,
    WORKER,
    NodeFacts,
    NodeStep,
    Preflight,
    Strategy,
    build_plan,
    parse_max_unavailable,
)
from kubecare.upgrade.window import parse_window
from kubecare.versions import deprecations as dep
from kubecare.versions import kubeadm, skew
from kubecare.versions.semver import Version, image_version, parse_target
from kubecare.versions.skew import Component

DATA = Path(__file__).parent / "data"

# -- versions -----------------------------------------------------------------------------------
# TestSemanticVersions: every version of the semver 2.0 spec in increasing order; True = equal
# to the previous one (build metadata and whitespace/"v" do not count).
SEMANTIC = [
    ("0.1.0", False), ("1.0.0-0.3.7", False), ("1.0.0-alpha", False),
    ("1.0.0-alpha+001", True), ("1.0.0-alpha.1", False), ("1.0.0-alpha.beta", False),
    ("1.0.0-beta", False), ("1.0.0-beta+exp.sha.5114f85", True), ("1.0.0-beta.2", False),
    ("1.0.0-beta.11", False), ("1.0.0-rc.1", False), ("1.0.0-x.7.z.92", False),
    ("1.0.0", False), ("1.0.0+20130313144700", True), ("1.8.0-alpha.3", False),
    ("1.8.0-alpha.3.673+73326ef01d2d7c", False), ("1.9.0", False), ("1.10.0", False),
    ("1.11.0", False), ("2.0.0", False), ("2.1.0", False), ("2.1.1", False), ("42.0.0", False),
    ("   42.0.0", True), ("\t42.0.0  ", True), ("43.0.0-1", False), ("43.0.0-1  ", True),
    ("v43.0.0-1", True), ("  v43.0.0", False), (" 43.0.0 ", True),
]  # fmt: skip


def test_semantic_versions_order_as_apimachinery() -> None:
    prev = None
    for text, equals_prev in SEMANTIC:
        v = Version.parse(text)
        if prev is not None:
            assert (v == prev) is equals_prev, text
            if not equals_prev:
                assert prev < v, text
        prev = v


BAD_SEMANTIC = [
    "1", "1.2", "1.2.3.4", ".2.3", "1..3", "1.2.", "", "..", "-1.2.3", "1.-2.3", "1.2.-3",
    "1a.2.3", "1.2a.3", "1.2.3a", "a1.2.3", "a.b.c", "1 .2.3", "1. 2.3", "01.2.3", "1.02.3",
    "1.2.03", "1.2.3-/", "1.2.3-", "1.2.3-.", "1.2.3-foo.", "1.2.3-.foo", "1.2.3+/", "1.2.3+",
    "1.2.3+.", "1.2.3+foo.", "1.2.3+.foo", "v 1.2.3", "vv1.2.3", "1.2.3-01",
]  # fmt: skip


@pytest.mark.parametrize("text", BAD_SEMANTIC)
def test_bad_semantic_versions_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a version"):
        Version.parse(text)


def test_target_errors_name_the_flag() -> None:
    with pytest.raises(UsageError, match=r"--to '1\.37'.*MAJOR\.MINOR\.PATCH"):
        parse_target("1.37")
    assert str(parse_target("1.37.2")) == "v1.37.2"


def test_image_tags() -> None:
    assert image_version("registry.k8s.io/kube-apiserver:v1.37.2") == Version(1, 37, 2)
    # kubeadm writes + as _ in tags (versiongetter.go)
    assert image_version("registry.k8s.io/kube-apiserver:v1.37.2_abc") == Version(1, 37, 2)
    assert image_version("registry.k8s.io/etcd:3.6.8-0") == Version(3, 6, 8, "0")
    assert image_version("localhost:5000/etcd") is None


# -- kubeadm's policy -------------------------------------------------------------------------
# TestEnforceVersionPolicies: (name, cluster, kubelet, kubeadm, new, experimental, rc,
# kubeadm's mandatory, kubeadm's skippable, kubecare's mandatory, kubecare's skippable).
POLICY = [
    ("minor upgrade", "1.3.3", "1.3.3", "1.3.5", "1.3.5", False, False, 0, 0, 0, 0),
    ("major upgrade", "1.3.3", "1.3.2", "1.4.1", "1.4.0", False, False, 0, 0, 0, 0),
    # kubeadm allows a patch downgrade; kubecare never downgrades
    ("downgrade", "1.3.3", "1.3.0", "1.3.3", "1.3.2", False, False, 0, 0, 1, 0),
    ("same version upgrade", "1.3.3", "1.3.3", "1.3.3", "1.3.3", False, False, 0, 0, 0, 0),
    # kubeadm's skippable error is about its own binary (newer than the target): not checked here
    ("new version must be higher than v1.12.0", "v1.12.3", "v1.12.3", "v1.12.3", "v1.10.10", False, False, 1, 1, 1, 0),
    ("upgrading two minor versions in one go is not supported", "v1.11.3", "v1.11.3", "v1.13.0", "v1.13.0", False, False, 1, 0, 1, 0),
    ("upgrading with n-3 kubelet is supported", "v1.14.3", "v1.12.3", "v1.15.0", "v1.15.0", False, False, 0, 0, 0, 0),
    ("upgrading with n-4 kubelet is not supported", "v1.14.3", "v1.11.3", "v1.15.0", "v1.15.0", False, False, 0, 1, 0, 1),
    ("downgrading two minor versions in one go is not supported", "1.6.0", "1.6.0", "1.4.0", "1.4.0", False, False, 1, 0, 1, 0),
    # the next three are about the kubeadm binary's version (kubecare leaves it to the executor)
    ("kubeadm version must be higher than the new kube version. However, patch version skews may be forced", "1.3.3", "1.3.3", "1.3.3", "1.3.5", False, False, 0, 1, 0, 0),
    ("kubeadm version must be higher than the new kube version. Trying to upgrade k8s to a higher minor version than kubeadm itself should never be supported", "1.3.3", "1.3.3", "1.3.3", "1.4.0", False, False, 1, 0, 0, 0),
    ("the maximum skew between the cluster version and the kubelet versions should be three minor version.", "v1.13.0", "v1.10.8", "v1.13.0", "v1.13.0", False, False, 0, 0, 0, 0),
    ("the maximum skew between the cluster version and the kubelet versions should be three minor version. This may be forced through though.", "v1.14.0", "v1.10.8", "v1.14.0", "v1.14.0", False, False, 0, 1, 0, 1),
    ("experimental upgrades supported if the flag is set", "1.3.3", "1.3.3", "1.4.0-beta.1", "1.4.0-beta.1", True, False, 0, 0, 0, 0),
    ("release candidate upgrades supported if the flag is set", "1.3.3", "1.3.3", "1.4.0-rc.1", "1.4.0-rc.1", False, True, 0, 0, 0, 0),
    ("release candidate upgrades supported if the flag is set (experimental)", "1.3.3", "1.3.3", "1.4.0-rc.1", "1.4.0-rc.1", True, False, 0, 0, 0, 0),
    ("the user should not be able to upgrade to an experimental version if they haven't opted into that", "1.3.3", "1.3.3", "1.4.0-beta.1", "1.4.0-beta.1", False, True, 0, 1, 0, 1),
    ("the user should not be able to upgrade to an release candidate version if they haven't opted into that", "1.3.3", "1.3.3", "1.4.0-rc.1", "1.4.0-rc.1", False, False, 0, 1, 0, 1),
    ("the user can't use a newer minor version of kubeadm to upgrade an older version of kubeadm", "1.3.3", "1.3.3", "1.4.0", "1.3.6", False, False, 0, 1, 0, 0),
    ("build release supported at MinimumControlPlaneVersion", "1.3.0", "1.3.0", "1.3.0+build", "1.3.0+build", False, False, 0, 0, 0, 0),
]  # fmt: skip


#: Where kubecare's expectation differs from kubeadm's, and why.
DIVERGES = {
    "downgrade": "kubecare never downgrades",
    "new version must be higher than v1.12.0": "kubeadm's skippable error is about its binary",
    "kubeadm version must be higher than the new kube version. However, patch version skews may be forced": "about the kubeadm binary",
    "kubeadm version must be higher than the new kube version. Trying to upgrade k8s to a higher minor version than kubeadm itself should never be supported": "about the kubeadm binary",
    "the user can't use a newer minor version of kubeadm to upgrade an older version of kubeadm": "about the kubeadm binary",
}  # fmt: skip


@pytest.mark.parametrize("case", POLICY, ids=[c[0] for c in POLICY])
def test_enforce_version_policies(case: tuple) -> None:  # type: ignore[type-arg]
    name, cluster, kubelet, _kubeadm, new, exp, rc, km, ks, mandatory, skippable = case
    got = skew.check_jump(
        Version.parse(cluster),
        Version.parse(new),
        {"node1": Version.parse(kubelet)},
        allow_experimental=exp,
        allow_rc=rc,
    )
    assert (len(got.mandatory), len(got.skippable)) == (mandatory, skippable), got
    if name not in DIVERGES:  # the same verdict as kubeadm's own table
        assert (mandatory, skippable) == (km, ks)


def test_policy_messages() -> None:
    v = Version.parse
    two = skew.check_jump(v("v1.11.3"), v("v1.13.0"), {})
    assert "too high" in two.mandatory[0] and "upgrade to v1.12.x first" in two.mandatory[0]
    rc = skew.check_jump(v("1.3.3"), v("1.4.0-rc.1"), {})
    assert "--allow-release-candidate-upgrades" in rc.skippable[0]
    old = skew.check_jump(v("v1.14.0"), v("v1.14.0"), {"n1": v("v1.10.8")})
    assert "n1" in old.skippable[0]


# TestKubeletVersionCheck (min v1.3.0 and the control plane version); "" = the current v1.4.0
KUBELET_CHECK = [
    ("v1.4.2", "", False), ("v1.1.0", "v1.11.8", True), ("v1.3.0", "1.3.5", False),
    ("v1.3.5", "1.3.1", False), ("v1.3.0", "1.4.1", False), ("v1.4.0-alpha.1", "1.3.1", True),
    ("v1.4.0", "1.3.5", True),
]  # fmt: skip


@pytest.mark.parametrize(("kubelet", "cp", "error"), KUBELET_CHECK)
def test_kubelet_version_check(kubelet: str, cp: str, error: bool) -> None:
    # the same verdicts from the skew rules (kubeadm's minimum is n-3 of itself; the table's
    # older cases are more than three minors behind their control plane too)
    got = skew.check_skew(
        comps(("kube-apiserver", "cp", cp or "v1.4.0"), ("kubelet", "n", kubelet))
    )
    assert bool(got) is error, got


def test_etcd_supported_version_falls_back_to_the_nearest_minor() -> None:
    # TestEtcdSupportedVersion's shape (below the map: the lowest; above: the highest), on the
    # table kubecare carries: kubeadm v1.36.3 pins 3.6.8-0, kubeadm v1.37.2 3.7.0-0.
    assert kubeadm.etcd_tag(36) == "3.6.8-0"
    assert kubeadm.etcd_tag(37) == "3.7.0-0"
    assert kubeadm.etcd_tag(10) == "3.6.8-0"
    assert kubeadm.etcd_tag(99) == "3.7.0-0"


# -- the skew policy's examples --------------------------------------------------------------
def comps(*rows: tuple[str, str, str]) -> list[Component]:
    return [Component(name, node, version, "test") for name, node, version in rows]


def rules(components: list[Component]) -> set[tuple[str, str, str]]:
    return {(v.component, v.node, v.rule) for v in skew.check_skew(components)}


def test_policy_examples_kubelet() -> None:
    # "kube-apiserver is at 1.32; kubelet is supported at 1.32, 1.31, 1.30, and 1.29"
    for minor, ok in ((32, True), (31, True), (30, True), (29, True), (28, False), (33, False)):
        got = rules(comps(("kube-apiserver", "cp", "v1.32.0"), ("kubelet", "n", f"v1.{minor}.0")))
        assert (not got) is ok, minor
    # "kube-apiserver instances are at 1.32 and 1.31; kubelet is supported at 1.31, 1.30, and
    # 1.29 (1.32 is not supported because that would be newer than the instance at 1.31)"
    ha = [("kube-apiserver", "a", "v1.32.0"), ("kube-apiserver", "b", "v1.31.0")]
    for minor, ok in ((32, False), (31, True), (30, True), (29, True), (28, False)):
        assert (not rules(comps(*ha, ("kubelet", "n", f"v1.{minor}.0")))) is ok, minor


def test_policy_examples_ha_and_control_plane() -> None:
    # "newest and oldest kube-apiserver instances must be within one minor version"
    assert rules(comps(("kube-apiserver", "a", "v1.32.0"), ("kube-apiserver", "b", "v1.30.0")))
    assert not rules(comps(("kube-apiserver", "a", "v1.32.0"), ("kube-apiserver", "b", "v1.31.0")))
    # controller-manager/scheduler: "supported at 1.32 and 1.31" for an apiserver at 1.32
    for minor, ok in ((32, True), (31, True), (30, False), (33, False)):
        got = rules(
            comps(
                ("kube-apiserver", "cp", "v1.32.0"),
                ("kube-controller-manager", "cp", f"v1.{minor}.0"),
            )
        )
        assert (not got) is ok, minor
    # kubeadm points controller-manager.conf at the local apiserver: a 1.32 controller-manager
    # beside a 1.32 apiserver is fine while another instance is still 1.31
    mixed = comps(
        ("kube-apiserver", "a", "v1.32.0"),
        ("kube-apiserver", "b", "v1.31.0"),
        ("kube-scheduler", "a", "v1.32.0"),
        ("kube-scheduler", "b", "v1.31.0"),
    )
    assert not rules(mixed)


def test_policy_examples_kube_proxy_and_kubectl() -> None:
    # kube-proxy: not newer than the apiserver, up to 3 older, within 3 of its kubelet
    base = [("kube-apiserver", "cp", "v1.32.0"), ("kubelet", "n", "v1.32.0")]
    assert not rules(comps(*base, ("kube-proxy", "", "v1.29.0")))
    assert ("kube-proxy", "", "proxy-newer") in rules(comps(*base, ("kube-proxy", "", "v1.33.0")))
    old_kubelet = [("kube-apiserver", "cp", "v1.32.0"), ("kubelet", "n", "v1.29.0")]
    assert not rules(comps(*old_kubelet, ("kube-proxy", "", "v1.32.0")))
    # "kubectl is supported at 1.33, 1.32, and 1.31" for an apiserver at 1.32
    for minor, ok in ((33, True), (32, True), (31, True), (30, False), (34, False)):
        got = rules(comps(("kube-apiserver", "cp", "v1.32.0"), ("kubectl", "", f"v1.{minor}.0")))
        assert (not got) is ok, minor


def test_a_newer_kubelet_patch_is_not_a_violation() -> None:
    # KubeletVersionCheck compares major/minor: ("v1.3.5", "1.3.1") is fine
    assert not rules(comps(("kube-apiserver", "cp", "v1.37.1"), ("kubelet", "n", "v1.37.2")))


# -- deprecations -------------------------------------------------------------------------------
def guide_removals() -> set[tuple[str, str, str, str]]:
    out = set()
    for line in (DATA / "deprecation-guide-removals.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        section, sentence = line.split("\t")
        gvs = re.findall(r"\*\*([^*]+)\*\*", sentence)
        m = re.search(r"API versions? of (.+?) (?:is|are|will) no longer", sentence)
        # else: "PodSecurityPolicy in the **policy/v1beta1** API version ..."
        kinds = re.split(r", and |, | and ", m[1]) if m else [sentence.split(" ", 1)[0]]
        for gv in gvs:
            group, _, version = gv.rpartition("/")
            for kind in kinds:
                out.add((section.removeprefix("v"), group, version, kind))
    return out


def test_removals_table_is_the_deprecation_guide() -> None:
    ours = {(r.removed_in, r.group, r.version, r.kind) for r in dep.REMOVALS}
    assert ours == guide_removals()


def test_removals_resources_are_the_kinds_plurals() -> None:
    for r in dep.REMOVALS:
        plural = r.kind.lower() + ("es" if r.kind.endswith(("s", "ss")) else "s")
        if r.kind.endswith("y"):
            plural = r.kind.lower()[:-1] + "ies"
        assert r.resource == plural, r


METRICS = """# HELP apiserver_requested_deprecated_apis [STABLE] Gauge of deprecated APIs ...
# TYPE apiserver_requested_deprecated_apis gauge
apiserver_requested_deprecated_apis{group="",removed_release="",resource="endpoints",subresource="",version="v1"} 1
apiserver_requested_deprecated_apis{group="example.com",removed_release="",resource="widgets",subresource="",version="v1alpha1"} 1
apiserver_requested_deprecated_apis{group="resource.k8s.io",removed_release="1.38",resource="resourceclaims",subresource="status",version="v1beta1"} 1
apiserver_requested_deprecated_apis_other{group="x"} 1
apiserver_request_total{code="200"} 5
"""


def test_metric_series_parsed_and_classified() -> None:
    uses = dep.parse_metrics(METRICS, "metric on apiserver 127.0.0.1:6443")
    assert [(u.group, u.version, u.resource, u.subresource, u.removed_release) for u in uses] == [
        ("", "v1", "endpoints", "", ""),
        ("example.com", "v1alpha1", "widgets", "", ""),
        ("resource.k8s.io", "v1beta1", "resourceclaims", "status", "1.38"),
    ]
    v137, v138 = Version.parse("v1.37.2"), Version.parse("v1.38.0")
    assert [u.removed_by(v137) for u in uses] == [False, False, False]
    assert [u.removed_by(v138) for u in uses] == [False, False, True]
    # an old series the metric has no removal for: the guide's table decides
    psp = dep.DeprecatedUse("policy", "v1beta1", "podsecuritypolicies", "", "", "x")
    assert psp.removed_by(Version.parse("v1.25.0")) and not psp.removed_by(Version(1, 24, 9))


# TestParseWarningHeader: (header, (code, agent, text) or the error, remainder)
WARNINGS = [
    ("", "fewer than 3 segments", ""),
    ("A B", "fewer than 3 segments", ""),
    ('1 - "text"', "not 3 digits", ""),
    ('A - "text"', "not 3 digits", ""),
    (' 299 - "text\\"\\\\\\a\\b\\c" "Tue, 15 Nov 1994 08:12:31 GMT ', "unterminated date segment", ""),
    (' 299 - "text\\"\\\\\\a\\b\\c" "Tue, 15 Nov 1994 08:12:31 GMT" other', "unexpected token after warn-date", ""),
    (' 299 agent\u0000name "text"', "invalid agent", ""),
    (" 299 agent\xc5name \"text\"", "invalid agent", ""),
    (' 299 - "text\u0000"content', "invalid text", ""),
    (' 299 - "text\xc5"content', "invalid text", ""),
    ('299 - "text"', (299, "-", "text"), ""),
    ('299 - "text\\"\\\\\\a\\b\\c"', (299, "-", 'text"\\abc'), ""),
    ('321 - "text"', (321, "-", "text"), ""),
    ('299 - "=?iso-8859-1?q?this=20is=20some=20text?="', (299, "-", "this is some text"), ""),
    ('299 - "=?UTF-8?B?VGhpcyBpcyBhIGhvcnNleTog8J+Qjg==?= And =?UTF-8?B?VGhpcyBpcyBhIGhvcnNleTog8J+Qjg==?="', (299, "-", "This is a horsey: 🐎 And This is a horsey: 🐎"), ""),
    ('299 - "=?UTF-8?Q?This is a \\"horsey\\": =F0=9F=90=8E?="', (299, "-", 'This is a "horsey": 🐎'), ""),
    ('299 - "=?UTF-9?Q?This is a horsey: =F0=9F=90=8E?="', (299, "-", "=?UTF-9?Q?This is a horsey: =F0=9F=90=8E?="), ""),
    (' 299 - "text\\"\\\\\\a\\b\\c" ', (299, "-", 'text"\\abc'), ""),
    (' 299 - "text\\"\\\\\\a\\b\\c" "Tue, 15 Nov 1994 08:12:31 GMT" ', (299, "-", 'text"\\abc'), ""),
    (' 299 - "text\\"\\\\\\a\\b\\c" "Tue, 15 Nov 1994 08:12:31 GMT" , ', (299, "-", 'text"\\abc'), ""),
    (' 299 - "text\\"\\\\\\a\\b\\c" , ', (299, "-", 'text"\\abc'), ""),
    (' 299 - "text\\"\\\\\\a\\b\\c" "Tue, 15 Nov 1994 08:12:31 GMT" , remainder ', (299, "-", 'text"\\abc'), "remainder"),
    (' 299 - "text\\"\\\\\\a\\b\\c" ,remainder text,second remainder', (299, "-", 'text"\\abc'), "remainder text,second remainder"),
    (' 299 - "Test of Iñtërnâtiônàlizætiøn,💝🐹🌇⛔" ', (299, "-", "Test of Iñtërnâtiônàlizætiøn,💝🐹🌇⛔"), ""),
]  # fmt: skip


@pytest.mark.parametrize(("header", "want", "remainder"), WARNINGS)
def test_parse_warning_header(header: str, want: object, remainder: str) -> None:
    # Raw bytes as Go sees them: the HTTP layer reads a header as latin-1 (one char per byte).
    raw = header.encode("utf-8", errors="surrogatepass")
    if "\xc5" in header:
        raw = header.encode("latin-1", errors="replace")
    text = dep.header_text(raw.decode("latin-1"))
    if isinstance(want, str):
        with pytest.raises(ValueError, match=want):
            dep.parse_warning_header(text)
        return
    got, rest = dep.parse_warning_header(text)
    assert (got.code, got.agent, got.text) == want
    assert rest == remainder


def test_several_warnings_and_only_299_kept() -> None:
    values = ['299 - "a", 299 - "b"', '199 - "misc"', "garbage", '299 - "c"']
    assert dep.parse_warnings(values) == ["a", "b", "c"]


# -- windows, batches, plan -----------------------------------------------------------------
def at(day: str, hhmm: str) -> datetime.datetime:
    # 2026-11-23 is a Monday
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    h, m = map(int, hhmm.split(":"))
    return datetime.datetime(2026, 11, 23 + days.index(day), h, m)


def test_windows() -> None:
    w = parse_window("Sat 02:00-06:00")
    assert w.contains(at("sat", "02:00")) and w.contains(at("sat", "05:59"))
    assert not w.contains(at("sat", "06:00")) and not w.contains(at("sun", "03:00"))
    assert w.next_opening(at("fri", "23:30")) == at("sat", "02:00")
    night = parse_window("Mon-Fri 22:00-04:00, Sun 10:00-11:00")
    assert night.contains(at("fri", "23:00")) and night.contains(at("sat", "03:59"))
    assert not night.contains(at("sat", "04:00")) and not night.contains(at("mon", "03:00"))
    assert night.contains(at("sun", "10:30"))
    daily = parse_window("01:00-02:00")
    assert daily.contains(at("wed", "01:30"))
    for bad in ("Sat", "Sat 2-6", "Sat 02:00-02:00", "Xyz 01:00-02:00", "Sat 25:00-26:00", ""):
        with pytest.raises(UsageError, match="--window"):
            parse_window(bad)


def test_max_unavailable() -> None:
    assert parse_max_unavailable("10%", 100) == 10
    assert parse_max_unavailable("10%", 5) == 1  # rounded down, at least one
    assert parse_max_unavailable("3", 100) == 3
    for bad in ("0", "-1", "0%", "101%", "x", "5%%"):
        with pytest.raises(UsageError, match="--max-unavailable"):
            parse_max_unavailable(bad, 10)


def cluster(
    version: str = "v1.36.3", cps: int = 3, workers: int = 5
) -> tuple[list[Component], list[NodeFacts]]:
    out: list[Component] = []
    nodes = []
    for i in range(1, cps + 1):
        n = f"cp-{i}"
        out += comps(
            ("kube-apiserver", n, version), ("kube-controller-manager", n, version),
            ("kube-scheduler", n, version), ("kubelet", n, version),
        )  # fmt: skip
        out.append(Component("etcd", n, "3.6.8-0", "mirror pod image"))
        nodes.append(NodeFacts(n, True, True, version))
    for i in range(1, workers + 1):
        out += comps(("kubelet", f"w-{i}", version))
        nodes.append(NodeFacts(f"w-{i}", False, True, version))
    return out, nodes


def test_plan_order_batches_and_etcd_first() -> None:
    components, nodes = cluster()
    plan = build_plan(
        components, nodes, Version.parse("v1.37.2"), Preflight(), max_unavailable="40%"
    )
    assert plan.go, plan.reasons
    assert [(s.node, s.role, s.batch) for s in plan.steps] == [
        ("cp-1", FIRST_CONTROL_PLANE, 0), ("cp-2", CONTROL_PLANE, 1), ("cp-3", CONTROL_PLANE, 2),
        ("w-1", WORKER, 3), ("w-2", WORKER, 3), ("w-3", WORKER, 4), ("w-4", WORKER, 4),
        ("w-5", WORKER, 5),
    ]  # fmt: skip
    assert [c.component for c in plan.steps[0].changes] == [
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
    ]  # fmt: skip
    assert plan.etcd_target == "3.7.0-0"
    # HA: the kubelet of an upgraded control-plane node is newer than the oldest apiserver
    # until the last control-plane node is done; nothing is left at the end
    assert any("kubelet v1.37.2 on cp-1" in t for t in plan.steps[0].skew_after)
    assert plan.steps[2].skew_after == ()
    assert not [c for c in plan.checks if c.name == "skew-after"]
    assert [c.name for c in plan.checks if c.name == "skew-during"] == ["skew-during"]


def test_plan_all_at_once_surge_and_up_to_date_nodes() -> None:
    components, nodes = cluster(workers=4)
    # a half-done run: cp-1 and w-1 already at the target
    done = {"cp-1", "w-1"}
    components = [
        Component(c.name, c.node, "v1.37.2" if c.node in done and c.name != "etcd" else c.version,
                  c.source) if c.node in done else c
        for c in components
    ]  # fmt: skip
    components = [
        Component("etcd", c.node, "3.7.0-0", c.source)
        if c.name == "etcd" and c.node == "cp-1"
        else c
        for c in components
    ]
    nodes = [
        NodeFacts(n.name, n.control_plane, True, "v1.37.2" if n.name in done else n.kubelet)
        for n in nodes
    ]
    t = Version.parse("v1.37.2")
    plan = build_plan(components, nodes, t, Preflight(), strategy=Strategy.ALL_AT_ONCE)
    assert [s.node for s in plan.pending] == ["cp-2", "cp-3", "w-2", "w-3", "w-4"]
    assert {s.batch for s in plan.pending if s.role == WORKER} == {3}
    surge = build_plan(components, nodes, t, Preflight(), strategy=Strategy.SURGE)
    assert len({s.batch for s in surge.pending if s.role == WORKER}) == 3


def test_plan_never_downgrades_etcd() -> None:
    components, nodes = cluster(cps=1, workers=0)
    components = [
        Component("etcd", c.node, "3.8.0-0", c.source) if c.name == "etcd" else c
        for c in components
    ]
    plan = build_plan(components, nodes, Version.parse("v1.37.2"), Preflight())
    assert "etcd" not in [c.component for c in plan.steps[0].changes]


def test_plan_no_go_reasons() -> None:
    components, nodes = cluster(cps=1, workers=2)
    nodes[1] = NodeFacts("w-1", False, False, "v1.36.3")
    pre = Preflight(
        drain_errors={"w-2": ("cannot delete Pods that declare no controller",)},
        pdb_blocked={"w-2": ("PDB default/db allows no disruption with all 1 pod(s) healthy",)},
        pdb_waits={"w-1": ("PDB default/web allows 1 disruption(s) for 2 pod(s)",)},
        deprecated=(
            dep.DeprecatedUse("resource.k8s.io", "v1beta1", "resourceclaims", "", "1.37", "metric on a"),
            dep.DeprecatedUse("example.com", "v1alpha1", "widgets", "", "", "stored objects", "deprecated; use v1"),
        ),
    )  # fmt: skip
    plan = build_plan(components, nodes, Version.parse("v1.37.2"), pre)
    assert not plan.go
    names = [c.name for c in plan.checks if c.blocking and not c.ok]
    assert names == ["nodes-ready", "drain", "pdb", "removed-api"]
    assert not next(c for c in plan.checks if c.name == "pdb-wait").blocking
    warning = next(c for c in plan.checks if c.name == "deprecated-api")
    assert not warning.blocking and "deprecated; use v1" in warning.detail
    skipped = build_plan(components, nodes, Version.parse("v1.38.0"), Preflight())
    assert "only 1 minor version at a time" in " ".join(skipped.reasons)


# -- journal, executors -------------------------------------------------------------------------
def test_journal_round_trip_and_refusals() -> None:
    j = Journal("v1.37.2", "now", "sandbox", "rolling", 1, [NodeRecord("a", WORKER, 3)])
    back = Journal.from_json(j.to_json(), "test")
    assert back == j
    newer = j.to_json().replace(b'"format": 1', b'"format": 9')
    with pytest.raises(UsageError, match="newer kubecare"):
        Journal.from_json(newer, "test")
    with pytest.raises(OperationFailed, match="not readable"):
        Journal.from_json(b"{}", "cm")


def test_templates_checked_before_anything_runs() -> None:
    ex.check_template("ssh {node} upgrade {version} {minor} {role}", "--command")
    with pytest.raises(UsageError, match=r"unknown placeholder \{host\}"):
        ex.CommandExecutor("run {host}")
    with pytest.raises(UsageError, match=r"--command 'run \{node'"):
        ex.CommandExecutor("run {node")
    with pytest.raises(UsageError, match="needs --command"):
        ex.CommandExecutor("")
    with pytest.raises(UsageError, match="--provision-command"):
        ex.CommandExecutor("run {node}", provision="add {x}")


def test_steps_file(tmp_path: Path) -> None:
    f = tmp_path / "steps.yaml"
    f.write_text("worker:\n  - echo {node} {version}\n")
    steps = ex.load_steps(f)
    assert steps[WORKER] == ("echo {node} {version}",)
    assert steps[FIRST_CONTROL_PLANE] == ex.DEFAULT_STEPS[FIRST_CONTROL_PLANE]
    f.write_text("- echo {nodes}\n")
    with pytest.raises(UsageError, match=r"unknown placeholder \{nodes\}"):
        ex.load_steps(f)
    f.write_text("workers: [a]\n")
    with pytest.raises(UsageError, match="expected a list"):
        ex.load_steps(f)
    with pytest.raises(UsageError, match="--steps"):
        ex.load_steps(tmp_path / "missing.yaml")


def test_default_steps_are_the_kubeadm_procedure() -> None:
    v = ex.values(NodeStep("n", FIRST_CONTROL_PLANE, 0, ()), Version.parse("v1.37.2"))
    first = [ex.render(s, v) for s in ex.DEFAULT_STEPS[FIRST_CONTROL_PLANE]]
    assert "/v1.37/deb/" in first[0]
    assert "kubeadm='1.37.2-*'" in first[1]
    assert first[2] == "kubeadm upgrade apply --yes v1.37.2"
    assert "kubelet='1.37.2-*' kubectl='1.37.2-*'" in first[3]
    assert first[-2:] == ["systemctl daemon-reload", "systemctl restart kubelet"]
    assert "kubeadm upgrade node" in ex.DEFAULT_STEPS[WORKER]


def test_job_manifest_is_pinned_and_privileged() -> None:
    job = ex.JobExecutor.__new__(ex.JobExecutor)
    job.image, job.steps, job.timeout = "debian:bookworm-slim", ex.DEFAULT_STEPS, 600
    m = job.manifest(NodeStep("worker-1", WORKER, 3, ()), Version.parse("v1.37.2"))
    pod = m["spec"]["template"]["spec"]
    assert pod["nodeName"] == "worker-1" and pod["hostPID"] and pod["restartPolicy"] == "Never"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    c = pod["containers"][0]
    assert c["securityContext"] == {"privileged": True}
    assert (
        c["command"][:2] == ["nsenter", "--target"] and "kubeadm upgrade node" in c["command"][-1]
    )
    assert m["spec"]["backoffLimit"] == 0 and len(m["metadata"]["name"]) <= 63


# -- review fixes ------------------------------------------------------------------------------
def test_a_newer_patch_is_never_downgraded() -> None:
    components, nodes = cluster(version="v1.37.1", cps=1, workers=2)
    components = [
        Component(c.name, c.node, "v1.37.3", c.source) if c.node == "w-1" else c for c in components
    ]
    nodes = [
        NodeFacts(n.name, n.control_plane, True, "v1.37.3" if n.name == "w-1" else n.kubelet)
        for n in nodes
    ]
    plan = build_plan(components, nodes, Version.parse("v1.37.2"), Preflight())
    by = {s.node: s for s in plan.steps}
    assert by["w-1"].up_to_date and not by["w-1"].changes
    assert [c.target for c in by["w-2"].changes] == ["v1.37.2"]


def test_mandatory_version_errors_cannot_be_ignored() -> None:
    from kubecare.upgrade.apply import refuse_no_go

    components, nodes = cluster(cps=1, workers=1)
    for target in ("v1.38.0", "v1.35.0"):
        plan = build_plan(components, nodes, Version.parse(target), Preflight())
        with pytest.raises(OperationFailed, match="no-go"):
            refuse_no_go(plan, ("all",))
    # a skippable one can (kubeadm's --force)
    plan = build_plan(components, nodes, Version.parse("v1.37.0-rc.1"), Preflight())
    with pytest.raises(OperationFailed, match="version-warning"):
        refuse_no_go(plan, ())
    refuse_no_go(plan, ("version-warning",))


def test_resumed_runs_exempt_their_own_nodes() -> None:
    components, nodes = cluster(cps=1, workers=2)
    nodes = [
        NodeFacts(n.name, n.control_plane, n.name != "w-1", n.kubelet, n.name == "w-1")
        for n in nodes
    ]
    pre = Preflight(drain_errors={"w-1": ("DaemonSet-managed Pods",)})
    assert not build_plan(components, nodes, Version.parse("v1.37.2"), pre).go
    plan = build_plan(components, nodes, Version.parse("v1.37.2"), pre, exempt=frozenset({"w-1"}))
    assert plan.go, plan.reasons
    assert next(s for s in plan.steps if s.node == "w-1").cordoned


@pytest.mark.parametrize(
    "template", ["run {node!r}", "run {version:d}", "run {node", "run }", "run {x}"]
)
def test_template_format_specs_and_conversions_refused(template: str) -> None:
    with pytest.raises(UsageError, match="--command"):
        ex.CommandExecutor(template)


def test_unbalanced_quotes_refused() -> None:
    with pytest.raises(UsageError, match="No closing quotation"):
        ex.CommandExecutor("sh -c 'run {node}")


# TestCompareKubeAwareVersionStrings (apimachinery pkg/version/helpers_test.go)
KUBE_AWARE = [
    ("v1", "v2", False), ("v2", "v1", True), ("v10", "v2", True), ("v1", "v2alpha1", True),
    ("v1", "v2beta1", True), ("v1alpha2", "v1alpha1", True), ("v1beta1", "v2alpha3", True),
    ("v1alpha10", "v1alpha2", True), ("v1beta10", "v1beta2", True), ("foo", "v1beta2", False),
    ("bar", "foo", True), ("version1", "version2", True), ("version1", "version10", True),
]  # fmt: skip


@pytest.mark.parametrize(("v1", "v2", "greater"), KUBE_AWARE)
def test_compare_kube_aware_version_strings(v1: str, v2: str, greater: bool) -> None:
    assert (dep.compare_kube_aware(v1, v2) > 0) is greater


def test_crd_deprecation_warning_as_the_apiserver_words_it() -> None:
    spec = {
        "group": "example.com",
        "names": {"kind": "Widget"},
        "versions": [
            {"name": "v1alpha1", "served": True, "deprecated": True},
            {"name": "v1beta1", "served": True},
            {"name": "v1", "served": True},
            {"name": "v2", "served": False},
        ],
    }
    assert (
        dep.crd_deprecation_warning(spec, "v1alpha1")
        == "example.com/v1alpha1 Widget is deprecated; use example.com/v1 Widget"
    )
    spec["versions"][0]["deprecationWarning"] = "use v1, v1alpha1 goes away in June"
    assert dep.crd_deprecation_warning(spec, "v1alpha1") == "use v1, v1alpha1 goes away in June"
    only = {
        "group": "g",
        "names": {"kind": "K"},
        "versions": [{"name": "v1", "served": True, "deprecated": True}],
    }
    assert dep.crd_deprecation_warning(only, "v1") == "g/v1 K is deprecated"


def test_a_running_journal_of_a_live_run_is_not_taken_over() -> None:
    import os
    import socket

    from kubecare.kube.lock import start_time
    from kubecare.upgrade import journal as jr

    j = Journal("v1.37.2", "t", "command", "rolling", 1, [], state="running")
    parent = os.getppid()
    j.owner = f"{socket.gethostname()}/{parent}/{start_time(parent)}"
    with pytest.raises(OperationFailed, match=f"pid {parent}"):
        jr.check_owner(j)
    jr.check_owner(j, take_over=True)
    j.owner = f"{socket.gethostname()}/{parent}/1"  # the pid was reused: that run is gone
    jr.check_owner(j)
    j.owner, j.updated = "elsewhere/1/1", jr.now()
    with pytest.raises(OperationFailed, match="--take-over"):
        jr.check_owner(j)
    j.updated = "2020-01-01T00:00:00Z"
    jr.check_owner(j)  # not written for years: gone
    j.state = "failed"
    j.updated = jr.now()
    jr.check_owner(j)  # a failed or paused run is anyone's to resume


def test_availability_is_counted_from_the_pods() -> None:
    from kubecare.upgrade.apply import unavailable

    def obj(kind: str, name: str, owner: tuple[str, str] | None = None, **extra: object) -> dict:  # type: ignore[type-arg]
        meta: dict[str, object] = {"name": name, "namespace": "ns"}
        if owner:
            meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
        return {"kind": kind, "metadata": meta, **extra}

    def pod(name: str, owner: tuple[str, str], ready: bool = True, gone: bool = False) -> dict:  # type: ignore[type-arg]
        p = obj(
            "Pod", name, owner, status={"conditions": [{"type": "Ready", "status": str(ready)}]}
        )
        if gone:
            p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return p

    deps = [obj("Deployment", "web", spec={"replicas": 2}), obj("Deployment", "api", spec={})]
    rss = [
        obj("ReplicaSet", "web-1", ("Deployment", "web")),
        obj("ReplicaSet", "api-1", ("Deployment", "api")),
    ]
    sts = [obj("StatefulSet", "db", spec={"replicas": 1})]
    dss = [obj("DaemonSet", "agent", status={"desiredNumberScheduled": 2})]
    pods = [
        pod("web-a", ("ReplicaSet", "web-1")),
        pod("web-b", ("ReplicaSet", "web-1"), gone=True),  # terminating: not counted
        pod("api-a", ("ReplicaSet", "api-1")),  # replicas unset: 1 wanted
        pod("db-0", ("StatefulSet", "db"), ready=False),
        pod("agent-a", ("DaemonSet", "agent")),
        pod("agent-b", ("DaemonSet", "agent")),
    ]
    assert unavailable(deps, sts, dss, rss, pods) == {"ns/Deployment/web", "ns/StatefulSet/db"}


async def test_a_journal_file_is_held_by_one_run_at_a_time(tmp_path: Path) -> None:
    from kubecare.upgrade.journal import FileStore

    a, b = FileStore(tmp_path / "j.json"), FileStore(tmp_path / "j.json")
    await a.hold()
    try:
        with pytest.raises(OperationFailed, match="another kubecare upgrade is using"):
            await b.hold()
    finally:
        a.release()
    await b.hold()  # free again once the first run let go
    b.release()
    j = Journal("v1.37.2", "t", "command", "rolling", 1, [])
    assert j.baseline is None  # not taken yet: a resumed run must not take it again
    await a.save(j)
    assert (tmp_path / "j.json").stat().st_mode & 0o777 == 0o600
    loaded = await a.load()
    assert loaded == j


# -- DaemonSets ---------------------------------------------------------------------------------
def test_upgrades_leave_daemonset_pods_and_the_plan_names_them() -> None:
    """kubeadm's upgrade guide drains with --ignore-daemonsets: kube-proxy and the CNI run on
    every node of a real cluster, so an upgrade that refused DaemonSet pods could never drain."""
    components, nodes = cluster(cps=1, workers=2)
    ds = {n.name: ("kube-system/DaemonSet/kube-proxy",) for n in nodes} | {
        "w-1": ("kube-system/DaemonSet/kube-proxy", "monitoring/DaemonSet/agent")
    }
    plan = build_plan(components, nodes, Version.parse("v1.37.2"), Preflight(daemonset_pods=ds))
    assert plan.go
    check = next(c for c in plan.checks if c.name == "daemonsets")
    assert check.ok and not check.blocking
    assert check.detail == (
        "DaemonSet pods stay running while their node drains: "
        "kube-system/DaemonSet/kube-proxy (3 nodes), monitoring/DaemonSet/agent (1 node)"
    )
    assert "daemonsets" not in [c.name for c in build_plan(
        components, nodes, Version.parse("v1.37.2"), Preflight()
    ).checks]  # fmt: skip


def test_upgrade_flags_ignore_daemonsets_by_default_drain_does_not() -> None:
    from kubecare.cli.app import build_parser
    from kubecare.cli.args import drain_options
    from kubecare.upgrade.apply import ApplyOptions

    parser = build_parser()
    base = ["upgrade", "plan", "--to", "1.37"]
    assert drain_options(parser.parse_args(base)).ignore_daemonsets
    assert not drain_options(parser.parse_args([*base, "--no-ignore-daemonsets"])).ignore_daemonsets
    apply = ["upgrade", "apply", "--to", "1.37", "--executor", "sandbox"]
    assert drain_options(parser.parse_args(apply)).ignore_daemonsets
    # kubectl drain's default stays: DaemonSet pods are refused unless asked
    assert not drain_options(parser.parse_args(["drain", "n1"])).ignore_daemonsets
    assert drain_options(
        parser.parse_args(["drain", "n1", "--ignore-daemonsets"])
    ).ignore_daemonsets
    assert ApplyOptions(Version.parse("v1.37.2")).drain.ignore_daemonsets


def test_preflight_lists_the_daemonset_pods_a_drain_leaves() -> None:
    from kubecare.nodes.drain_plan import DrainPlan, PodPlan
    from kubecare.nodes.filters import Action
    from kubecare.upgrade.preflight import _daemonset_pods

    def pod(ns: str, name: str, action: Action, owner: str) -> PodPlan:
        return PodPlan(ns, name, name, action, "", (), owner, (), (), True)

    plan = DrainPlan(
        "w-1",
        (
            pod("kube-system", "kube-proxy-x", Action.SKIP, "DaemonSet/kube-proxy"),
            pod("kube-system", "etcd-w-1", Action.SKIP, "Node/w-1"),
            pod("default", "web-1", Action.EVICT, "ReplicaSet/web-abc"),
            pod("kube-system", "kube-proxy-y", Action.SKIP, "DaemonSet/kube-proxy"),
        ),
        (),
        (),
    )
    assert _daemonset_pods(plan) == ("kube-system/DaemonSet/kube-proxy",)


# -- control-plane nodes without the label (issue 19, item 6) ------------------------------------
def test_a_node_running_control_plane_mirror_pods_is_a_control_plane_without_its_label() -> None:
    from kubecare.upgrade.preflight import node_facts, static_pod_nodes
    from kubecare.versions.inventory import Inventory

    def node(name: str, labels: dict[str, str]) -> dict[str, object]:
        return {"metadata": {"name": name, "labels": labels},
                "status": {"nodeInfo": {"kubeletVersion": "v1.36.3"}}}  # fmt: skip

    nodes = [
        node("cp-1", {"node-role.kubernetes.io/control-plane": ""}),
        node("cp-2", {}),  # label removed by someone; its static pods still run
        node("w-1", {}),
    ]
    comps = [
        Component(skew.APISERVER, "cp-1", "v1.36.3", ""),
        Component(skew.ETCD, "cp-2", "3.6.8-0", ""),
        Component(skew.ETCD, "https://127.0.0.1:2379", "v3.6.16", "Status RPC"),
        Component(skew.KUBELET, "w-1", "v1.36.3", ""),
    ]
    static = static_pod_nodes(Inventory(comps, [], []))
    assert {"cp-1", "cp-2"} <= static and "w-1" not in static
    facts = {f.name: f.control_plane for f in node_facts(nodes, static)}
    assert facts == {"cp-1": True, "cp-2": True, "w-1": False}
    # without the mirror pods, the label alone decided (the bug: cp-2 planned as a worker)
    assert {f.name: f.control_plane for f in node_facts(nodes)}["cp-2"] is False
