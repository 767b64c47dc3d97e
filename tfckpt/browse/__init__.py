"""Reading a run: which checkpoints a selection means, restores with fallback,
pruning, display, exports and copies."""
