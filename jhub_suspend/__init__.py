"""jhub-suspend: suspend idle Jupyter servers to a checkpoint instead of culling them."""
