"""Telecom top-up connector: operator lookup by MSISDN, fixed and range denominations, top-up and
status through an aggregator's REST API signed with HMAC-SHA256 (DESIGN §8).

Wire format: :mod:`connectors.telecom_topup.transformers`; the simulator: :mod:`connectors.sandbox.telecom`.
"""

from connectors.telecom_topup.client import TelecomTopupConnector

__all__ = ["TelecomTopupConnector"]
