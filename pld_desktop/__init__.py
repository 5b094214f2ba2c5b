"""PLD Desktop: Prompt-Level Distillation of labelled examples into a rule prompt for a small local model."""

__version__ = "0.1.0"
