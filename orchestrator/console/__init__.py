"""What a person reads on the terminal while a job runs: stage lines, the progress line, epoch lines, the summary."""
