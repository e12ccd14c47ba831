"""One training run: its config, data, memory check and the train entry point (python -m pipelines.train)."""
