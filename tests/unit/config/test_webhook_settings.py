"""``[webhooks]`` settings: defaults, and values that cannot work are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import DEFAULT_CONFIG, ConfigError, WebhookSettings, load_settings


def _config(tmp_path: Path, webhooks: str) -> Path:
    path = tmp_path / "payhub.toml"
    text = DEFAULT_CONFIG.read_text()
    assert "\n[webhooks]\n" in text
    path.write_text(text.replace("\n[webhooks]\n", f"\n[webhooks]\n{webhooks}\n", 1))
    return path


def test_defaults_match_the_design() -> None:
    webhooks = load_settings(env={}).webhooks
    assert webhooks == WebhookSettings()
    assert (webhooks.retry_window, webhooks.timeout, webhooks.backoff_base, webhooks.backoff_cap) == (
        86400.0,
        10.0,
        5.0,
        3600.0,
    )
    assert webhooks.lease > webhooks.timeout


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("timeout = 0.0", "webhooks.timeout"),
        ("retry_window = -1.0", "webhooks.retry_window"),
        ("interval = nan", "webhooks.interval"),
        ("concurrency = 0", "webhooks.concurrency"),
        ("lease = 5.0", "webhooks.lease"),  # not longer than the 10 s time-out
        ("backoff_cap = 1.0", "webhooks.backoff_cap"),
        ("rotation_overlap = -5.0", "webhooks.rotation_overlap"),
        ("unknown_key = 1", "webhooks"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    path = _config(tmp_path, line)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(path, env={})
