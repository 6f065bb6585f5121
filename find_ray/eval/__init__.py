"""Evaluation: suites on fixed noise, paired statistics, diversity, reports."""
