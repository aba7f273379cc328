"""Research apart from the product: experiments that measure the method on public data.

Nothing in ``service``, ``trainer``, ``reviewui`` or ``cadcli`` imports this package, and the
images do not carry it; run it from a checkout (``python -m experiments.cvc``). The experiments
call the production round code (``trainer.round.run_round``), as a hospital's trainer runs it.
"""
