"""In-process connector: the DESIGN §12 sandbox outcomes without a network hop.

It stands in for the network sandbox connectors (ISO 8583 acquirer, bank, e-wallet) until they
land, and serves unit tests; it goes through the same PaymentConnector Protocol as they will.
"""

from connectors.inprocess.client import InProcessConnector

__all__ = ["InProcessConnector"]
