"""Backups of the cluster's resource configuration through the API: create, verify, diff, restore."""
