"""Versions of a cluster's components and the version skew policy (pure rules + inventory)."""
