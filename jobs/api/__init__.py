"""Serving: the twin API and its live view."""
