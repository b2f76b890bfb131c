"""The fleet: kubecare's commands over many clusters at once.

- :mod:`.select`: which kubeconfig contexts (kubectl-foreach's patterns, plus globs) and which
  clusters of a fleet file (label selectors);
- :mod:`.fleetfile`: the fleet file (clusters, labels, groups, waves) and its checks;
- :mod:`.status`: one row per cluster, every cluster asked at once;
- :mod:`.runner`: one kubecare command per cluster, bounded parallelism, lines prefixed.

Every cluster gets its own client built from its own context: the user's current-context is
never changed and no credentials are merged across clusters.
"""
