"""What a person reads on the terminal while a job runs: stage lines, progress and epoch lines, the summary.
May import: runs (tracking: the epochs a run logged).
"""
