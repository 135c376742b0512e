"""Stages of the dataset-to-firmware pipeline; each module is plain functions that dodo.py wires up."""
