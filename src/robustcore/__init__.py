"""robustcore: coreset selection and adversarial training for robust models at lower compute."""

__version__ = "0.1.0"
