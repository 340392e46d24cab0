"""A small single-machine Kubernetes: an emulated API server and kubelets that run real
process trees, checkpointed and restored with CRIU (see docs/localcluster.md)."""
