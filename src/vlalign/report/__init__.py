"""The run report: HTML (self-contained) and Markdown with plots, from a run's files."""
