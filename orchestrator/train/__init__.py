"""What runs inside each Ray Train worker: the loop, its metrics, schedule and checkpoints."""
