"""A kubeadm control plane's certificates: what expires when (:mod:`.inventory`), and renewal
with the same CA (:mod:`.renew`)."""
