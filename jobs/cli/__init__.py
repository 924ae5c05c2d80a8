"""The ``tiertwin`` command: one static Typer tree (jobs/cli/main.py), the commands beside what they drive."""
