"""Shift invariance and equivariance of the zoo, and the invariances that shape gradients.

Run with `python -m experiments.invariance`.
"""
