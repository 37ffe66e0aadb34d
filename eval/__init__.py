"""Measurement: retrieval metrics on BEIR folders, answer metrics on QA sets, reports."""
