"""The demo: JupyterHub with jhub-suspend on the local cluster."""
