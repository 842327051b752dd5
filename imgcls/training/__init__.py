"""Training: the optimisation loop for neural classifiers, with schedules, checkpoints and hooks."""
