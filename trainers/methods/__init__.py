"""Pruning methods, each in its own module, each ending in trainers.pruning.remove_smallest."""
