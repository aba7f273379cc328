"""The CAD domain, apart from any transport: DICOM and image decoding (``imaging``), CT volumes
(``volumes``), the AIFT method and its baselines (``aift``), models, their registry and manifest
(``models``), the label store and image archive (``labels``), and the settings groups the
processes share. No gRPC in here (checked by ``tests/repo/test_layout.py``) and no torch
(``tests/repo/test_no_torch.py``): the server (``service``), the trainer, the review page and the
gateway all build on it."""
