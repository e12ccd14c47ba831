"""Experiments on top of the lab: each a folder with its measures, its entry point and its tests."""
