"""Metrics, compute accounting and the experiment runner."""
