"""Label selectors as the apiserver evaluates them (metav1.LabelSelector), for PDB coverage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a LabelSelector.

    As metav1.LabelSelectorAsSelector and the eviction API (eviction.go getPodDisruptionBudgets)
    evaluate it: a missing (null) selector matches nothing, an empty one ``{}`` everything, and an
    invalid one (In/NotIn without values, Exists/DoesNotExist with values, an unknown operator)
    matches nothing.
    """
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if (op in ("In", "NotIn")) != bool(values):
            return False  # labels.NewRequirement rejects it: the selector is invalid
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True
