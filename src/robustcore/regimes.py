"""Adversarial training regimes, registered into robustcore.train.REGIMES."""
