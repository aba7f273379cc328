"""The AIFT annotation-saving experiment on CVC-ClinicDB (``python -m experiments.cvc``).

- :mod:`experiments.cvc.pool`: frames, polyp masks and the candidate generator;
- :mod:`experiments.cvc.run`: presets, workspaces per method and seed, rounds through the
  production round code, resumable;
- :mod:`experiments.cvc.report`: the CSV to plots, savings tables and a summary;
- ``split.json``: the pool and test sequences.
"""
