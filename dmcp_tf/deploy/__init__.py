"""Deployment of a slim model: SavedModel and TFLite export, parity and latency on the host (`export`)."""
