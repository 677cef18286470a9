"""Lightning training."""
