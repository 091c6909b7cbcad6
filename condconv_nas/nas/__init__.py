"""The search: declarative spaces, the budget, backends (Optuna; Ray Tune and NNI on demand)."""
