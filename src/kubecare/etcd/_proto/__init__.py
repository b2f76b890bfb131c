"""Generated: scripts/gen_etcd_proto.py. Do not edit."""
