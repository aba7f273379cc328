"""CAD inference service: gRPC transport over a numpy-only domain (no torch here)."""
