"""Models: the on-disk registry, ONNX Runtime sessions, the dynamic batcher, the model manager with its listeners, and the classifier."""
