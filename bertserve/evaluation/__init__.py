"""Datasets, metrics and scoring an artifact through the served pipeline: one evaluation path."""
