"""Global selection policies: pure functions on numpy arrays of scores, no Ray."""
