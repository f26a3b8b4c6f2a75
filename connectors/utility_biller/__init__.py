"""Utility biller connector: query (查询), pay (缴费), status, reversal (冲正) and the daily
reconciliation file of a 生活缴费 platform, over form-encoded HTTP signed with RSA2 (DESIGN §8).

Wire format: :mod:`connectors.utility_biller.transformers`; keys and errors:
:mod:`connectors.utility_biller.client`; the simulator: :mod:`connectors.sandbox.utility`.
"""

from connectors.utility_biller.client import UtilityBillerConnector

__all__ = ["UtilityBillerConnector"]
