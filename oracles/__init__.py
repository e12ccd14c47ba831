"""Brute-force oracles the probe and the models are checked against: a NumPy reference and the gradient checks.

Used by the tests and by `python -m oracles.gradcheck`; nothing of the lab imports them.
"""
