"""Run folders: what training writes (config, policy, report, logs) and what reads them back."""
