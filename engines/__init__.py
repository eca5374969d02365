"""Inference: predictor backends, expert models, the images the VLM sees, VILA-M3 and the consultation agent."""
