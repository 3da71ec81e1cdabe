"""Kubernetes side of Beyond Flatland: the work plan of an experiment and the Jobs that run it."""
