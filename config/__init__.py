"""Settings loader, dev defaults (payhub.toml) and schema."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
