"""The ``cad`` command: dispatches to the server (no torch) or the trainer (torch) lazily."""
