"""The trainer (PyTorch): model bootstrap, and later AIFT rounds. The server never imports it."""
