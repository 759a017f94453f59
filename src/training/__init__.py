"""Training: the run from a composed config (experiment), the loop (trainer), checkpoints and resume,
schedules, the EMA of the weights, the loss and the TensorBoard logger."""
