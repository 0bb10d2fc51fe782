"""The perturbation family: methods that only evaluate the model."""
