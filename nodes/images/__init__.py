"""IMAGE outputs drawn by the nodes: strength curves, loss charts and per-block heat maps."""
