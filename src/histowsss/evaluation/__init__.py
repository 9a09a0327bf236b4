"""Evaluation: pixel-level (confusion matrix) and GlaS object-level segmentation metrics."""
