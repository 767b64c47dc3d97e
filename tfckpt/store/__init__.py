"""A run directory on disk: its names, the commit protocol, listing and
verification, incremental sharing, the writer's lock, readers' pins, and the
TF checkpoint and state files of each checkpoint."""
