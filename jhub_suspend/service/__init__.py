"""The jhub-suspend service: policy loop, REST API and metrics (a JupyterHub service)."""

from .app import SuspendService, main

__all__ = ["SuspendService", "main"]
