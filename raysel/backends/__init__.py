"""Engines behind one interface (LossScorer); make_scorer picks one from the config."""
