"""Where a job runs: the embedded or local Ray (local.py); remote clusters come later."""
