"""Inference from a checkpoint: one object for eval, predict, visualize, the server and the Python API."""
