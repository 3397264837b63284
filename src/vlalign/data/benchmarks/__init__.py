"""Evaluation data: standard benchmark layouts and the offline sets built from bundled assets."""
