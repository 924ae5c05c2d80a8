"""Experiments over the twin: evaluation against baselines, what-if replays and archive reports."""
