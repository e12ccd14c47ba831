"""Run config, data, gradient probe, recorder and the train entry point."""
