"""Study specs (YAML, in specs/), their validation and the one generic Optuna runner."""
