"""JSON as Go's encoding/json writes it, which is what kube-apiserver answers a GET with:
HTML-safe string escaping (``<`` ``>`` ``&`` U+2028/9), one U+FFFD per invalid UTF-8 byte, map
keys sorted bytewise, floats in strconv's shortest form with encoding/json's switch to exponent
notation, and a Marshaler's output compacted with its numbers verbatim.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import SnapshotError


class JsonError(SnapshotError):
    """A value that cannot be written or read as Go would."""


_ESCAPES = {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
for _c in range(0x20):
    _ESCAPES.setdefault(_c, f"\\u{_c:04x}")
# invalid UTF-8: Go writes one U+FFFD per bad byte (surrogateescape maps each to one surrogate)
for _c in range(0xDC80, 0xDD00):
    _ESCAPES[_c] = "\ufffd"


def go_string(raw: bytes | str) -> str:
    """A JSON string as Go's encoding/json writes it (HTML-safe, invalid bytes -> U+FFFD)."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    return '"' + text.translate(_ESCAPES) + '"'


def go_float(f: float) -> str:
    """strconv.AppendFloat(f, 'f' or 'e', -1, 64) as encoding/json picks: 'e' iff the absolute
    value is < 1e-6 or >= 1e21, with a 2-digit exponent minimum ("1e-07" -> "1e-7")."""
    import decimal

    if f != f or f in (float("inf"), float("-inf")):
        raise JsonError("json: unsupported float value")
    sign, digits, exp = decimal.Decimal(repr(f)).as_tuple()
    assert isinstance(exp, int)
    d = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + exp
    neg = "-" if sign else ""
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        e = point - 1
        mantissa = d[0] + ("." + d[1:] if len(d) > 1 else "")
        es = f"{abs(e):02d}"
        if e < 0 and es.startswith("0"):
            es = es[1:]
        return f"{neg}{mantissa}e{'-' if e < 0 else '+'}{es}"
    if d == "0":
        return neg + "0"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{d}"
    if point >= len(d):
        return neg + d + "0" * (point - len(d))
    return f"{neg}{d[:point]}.{d[point:]}"


def go_compact(raw: bytes) -> str:
    """encoding/json on a Marshaler's output: compacted, HTML-escaped, numbers verbatim."""
    s = raw.decode("utf-8", "surrogateescape")
    out, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            out.append(
                s[i : j + 1]
                .replace("<", "\\u003c")
                .replace(">", "\\u003e")
                .replace("&", "\\u0026")
                .replace("\u2028", "\\u2028")
                .replace("\u2029", "\\u2029")
            )
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class _Number(str):
    """A JSON number kept as written (no float round trip)."""


def go_json(value: Any) -> str:
    """A decoded JSON document (dicts, lists, str, _Number, bool, None) as Go writes a
    map[string]interface{}: keys sorted, strings escaped."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_string(k)}:{go_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return go_string(value)
    raise JsonError(f"unexpected JSON value {value!r}")


def _json_number(text: str) -> Any:
    """k8s.io/apimachinery/pkg/util/json: an integral number is int64, anything else float64."""
    try:
        v = int(text)
        if -(1 << 63) <= v < 1 << 63:
            return _Number(str(v))
    except ValueError:
        pass
    return _Number(go_float(float(text)))


def loads_json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_int=_json_number, parse_float=_json_number)
    except (ValueError, UnicodeDecodeError) as e:
        raise JsonError(f"not valid JSON: {e}") from None
