"""FX feed connector (DESIGN §8): rates over HTTP; quotes are refused when the rates are stale."""

from connectors.fx_feed.client import FxFeedConnector, fx_feed_from_settings
from connectors.fx_feed.transformers import Rates, StaleRates

__all__ = ["FxFeedConnector", "Rates", "StaleRates", "fx_feed_from_settings"]
