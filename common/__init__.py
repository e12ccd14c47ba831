"""What every entry point of the lab shares, light and free of torch: the one-line argument parser, the
error of a bad value, pre-flight checks of the tracking store, process liveness, links into the MLflow UI,
the study-name rule and process start-up. Imports nothing of the lab (tests/test_architecture.py).
"""
