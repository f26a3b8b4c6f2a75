"""E-wallet connector (DESIGN §8): QR code / redirect next action, signed notify, order close.

Sandbox behaviour (DESIGN §12, ``connectors/sandbox/ewallet.py``): an order is paid by the sandbox
about 1 s after it was opened, or at once with ``POST /simulate/pay/{order}``; an unpaid order
closes itself after ``order_timeout`` (15 min by default).
"""

from connectors.ewallet.client import EwalletConnector

__all__ = ["EwalletConnector"]
