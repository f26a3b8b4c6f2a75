"""Bank transfer connector (DESIGN §8): pending until the bank's signed callback or a status poll.

Sandbox test data (DESIGN §12, ``connectors/sandbox/bank.py``): accounts ending ``0002`` are rejected
at once; ``0005`` settle without a callback (only a status poll finds out); ``0009`` settle with the
callback delivered twice (duplicate-callback test data); any other account settles by signed callback
about 1 s after the transfer was accepted.
"""

from connectors.bank_transfer.client import BankTransferConnector

__all__ = ["BankTransferConnector"]
