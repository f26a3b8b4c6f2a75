"""ISO 8583 card connector: one persistent TCP link to the card acquirer (DESIGN §8, §12).

``transformers`` builds and reads the messages (pure); ``client`` holds the connection, matches
answers to requests by STAN, reverses unanswered requests and answers status inquiries by RRN.
"""

from connectors.iso8583_card.client import Iso8583CardConnector

__all__ = ["Iso8583CardConnector"]
