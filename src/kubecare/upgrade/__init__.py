"""Cluster upgrades, one minor at a time: plan (pure), preflight, executors, journal, apply."""
