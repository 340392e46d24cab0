"""A small single-machine Kubernetes: an emulated API server and kubelets that drive a real
containerd through CRI, which runs, checkpoints and restores the pods with runc and CRIU
(see docs/localcluster.md)."""
