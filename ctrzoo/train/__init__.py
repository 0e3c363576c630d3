"""Training: loop, optimizers and the regularizers that live with training rather than inside models."""
