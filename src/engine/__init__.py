"""Training loop, evaluation, metrics, checkpoints, schedules and TensorBoard logging."""
