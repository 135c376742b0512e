"""Evaluations of the trained model beyond accuracy: confidence hardening, robustness, engine parity."""
