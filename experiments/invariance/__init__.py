"""Shift invariance and equivariance of the zoo, and the invariances that shape gradients (python -m experiments.invariance)."""
