"""Evaluation tasks: each module has one pure ``evaluate(...) -> dict`` on embeddings."""
