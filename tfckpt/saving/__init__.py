"""What the manager does to save: the TF writer (sync or async), retention after
a commit, preemption signals, multi-worker coordination and forks."""
