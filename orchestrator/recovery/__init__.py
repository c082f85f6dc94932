"""Which checkpoint: the rule for best, where a run continues (restart point), a run's best or latest one.
May import: train (the checkpoint format), runs (run_lookup).
"""
