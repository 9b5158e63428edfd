"""Evaluation of frozen encoders: features, the linear probe (eval.py) and the ridge probe."""
