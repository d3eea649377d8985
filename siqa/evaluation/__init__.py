"""Evaluation: metrics, statistics, reports and protocol cards, evaluate.py, the
cross-database matrix, merged runs and comparisons of runs."""
