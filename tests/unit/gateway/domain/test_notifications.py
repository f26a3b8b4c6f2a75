"""Preference validation and the time arithmetic of reminders (gateway/domain/notifications.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.notifications import (
    InvalidPreference,
    QuietHours,
    check_locale,
    check_phone,
    check_quiet_hours,
    check_timezone,
    days_until,
    is_due_soon,
    message_body,
    quiet_until,
    validate_preferences,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = QuietHours(time(22, 0), time(7, 0))


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc]


# ---- validation -------------------------------------------------------------------------------


def test_defaults() -> None:
    prefs = validate_preferences()
    assert (prefs.locale, prefs.timezone, prefs.channels, prefs.quiet_hours) == ("en", "UTC", (), None)
    assert (prefs.reminder_lead_days, prefs.theme, prefs.font_scale) == (3, "system", 1.0)
    assert validate_preferences(default_lead_days=7).reminder_lead_days == 7


def test_a_full_valid_object_is_normalised() -> None:
    prefs = validate_preferences(
        locale="zh-CN",
        timezone="Asia/Shanghai",
        default_currency="cny",
        channels=["sms", "webhook", "email", "sms"],
        email="li@example.com",
        phone="+8613800138000",
        quiet_hours=("22:00", "07:00"),
        reminder_lead_days=0,
        theme="dark",
        font_scale=2,
    )
    assert prefs.default_currency == "CNY"
    assert prefs.channels == ("email", "sms")  # webhook is implicit, duplicates collapse
    assert prefs.quiet_hours == NIGHT
    assert prefs.font_scale == 2.0


@pytest.mark.parametrize("tag", ["en", "zh-CN", "zh-Hans-CN", "en-US", "es-419", "sr-Latn-RS"])
def test_well_formed_locales(tag: str) -> None:
    assert check_locale(tag) == tag


@pytest.mark.parametrize("tag", ["", "en_US", "xx-YY", "english", "zh--CN", "-en", "e", "123"])
def test_malformed_locales(tag: str) -> None:
    with pytest.raises(InvalidPreference) as caught:
        check_locale(tag)
    assert caught.value.param == "locale"


@pytest.mark.parametrize("name", ["Mars/Base", "../../etc/passwd", "/etc/localtime", "asia/shanghai", ""])
def test_unknown_time_zones(name: str) -> None:
    with pytest.raises(InvalidPreference) as caught:
        check_timezone(name)
    assert caught.value.param == "timezone"


def test_known_time_zones() -> None:
    for name in ("UTC", "Asia/Shanghai", "America/Argentina/Buenos_Aires"):
        assert check_timezone(name) == name


@pytest.mark.parametrize(
    "phone", ["+1234", "+10000000000", "8613800138000", "+86 138 0013 8000", "+0123456789"]
)
def test_bad_phones(phone: str) -> None:
    with pytest.raises(InvalidPreference) as caught:
        check_phone(phone)
    assert caught.value.param == "phone"


@pytest.mark.parametrize(
    ("start", "end", "param"),
    [
        ("24:00", "07:00", "quiet_hours.start"),
        ("22:60", "07:00", "quiet_hours.start"),
        ("22:00", "7:00", "quiet_hours.end"),
        ("22:00", "22:00", "quiet_hours.end"),
        ("22:00:00", "07:00", "quiet_hours.start"),
    ],
)
def test_bad_quiet_hours(start: str, end: str, param: str) -> None:
    with pytest.raises(InvalidPreference) as caught:
        check_quiet_hours(start, end)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({"channels": ["sms"]}, "phone"),
        ({"channels": ["email"]}, "email"),
        ({"channels": ["fax"]}, "channels.0"),
        ({"default_currency": "XYZ"}, "default_currency"),
        ({"reminder_lead_days": 61}, "reminder_lead_days"),
        ({"font_scale": 0.7}, "font_scale"),
        ({"theme": "sepia"}, "theme"),
        ({"email": "a@b"}, "email"),
    ],
)
def test_invalid_combinations_name_the_field(values: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidPreference) as caught:
        validate_preferences(**values)  # type: ignore[arg-type]
    assert caught.value.param == param


# ---- quiet hours ------------------------------------------------------------------------------


def test_quiet_hours_spanning_midnight() -> None:
    evening = local(SHANGHAI, 2026, 6, 1, 23, 30)
    assert quiet_until(evening, SHANGHAI, NIGHT) == local(SHANGHAI, 2026, 6, 2, 7, 0).astimezone(UTC)
    morning = local(SHANGHAI, 2026, 6, 2, 6, 59)
    assert quiet_until(morning, SHANGHAI, NIGHT) == local(SHANGHAI, 2026, 6, 2, 7, 0).astimezone(UTC)
    assert quiet_until(local(SHANGHAI, 2026, 6, 2, 7, 0), SHANGHAI, NIGHT) is None  # end is exclusive
    assert quiet_until(local(SHANGHAI, 2026, 6, 2, 21, 59), SHANGHAI, NIGHT) is None
    assert quiet_until(local(SHANGHAI, 2026, 6, 2, 22, 0), SHANGHAI, NIGHT) is not None  # start inclusive


def test_quiet_hours_within_one_day() -> None:
    nap = QuietHours(time(13, 0), time(15, 0))
    assert quiet_until(local(BERLIN, 2026, 6, 1, 12, 59), BERLIN, nap) is None
    assert quiet_until(local(BERLIN, 2026, 6, 1, 14, 0), BERLIN, nap) == datetime(
        2026, 6, 1, 13, 0, tzinfo=UTC
    )
    assert quiet_until(local(BERLIN, 2026, 6, 1, 15, 0), BERLIN, nap) is None


def test_no_quiet_hours() -> None:
    assert quiet_until(datetime(2026, 6, 1, 3, 0, tzinfo=UTC), SHANGHAI, None) is None


def test_quiet_hours_are_read_in_the_customers_zone() -> None:
    now = datetime(2026, 6, 1, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai, 11:00 in New York
    assert quiet_until(now, SHANGHAI, NIGHT) == datetime(2026, 6, 1, 23, 0, tzinfo=UTC)  # 07:00 CST
    assert quiet_until(now, NEW_YORK, NIGHT) is None


def test_a_night_when_clocks_spring_forward_ends_at_the_wall_clock_time() -> None:
    # New York, 8 March 2026: 02:00 EST jumps to 03:00 EDT; the night is an hour shorter.
    evening = local(NEW_YORK, 2026, 3, 7, 23, 0)
    end = quiet_until(evening, NEW_YORK, NIGHT)
    assert end == datetime(2026, 3, 8, 11, 0, tzinfo=UTC)  # 07:00 EDT (UTC-4)
    assert end is not None
    assert end - evening == timedelta(hours=7)


def test_a_night_when_clocks_fall_back_ends_at_the_wall_clock_time() -> None:
    # New York, 1 November 2026: 02:00 EDT falls back to 01:00 EST; the night is an hour longer.
    evening = local(NEW_YORK, 2026, 10, 31, 23, 0)
    end = quiet_until(evening, NEW_YORK, NIGHT)
    assert end == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # 07:00 EST (UTC-5)
    assert end is not None
    assert end - evening == timedelta(hours=9)


def test_an_end_inside_the_dst_gap_lands_just_after_it() -> None:
    gap = QuietHours(time(1, 0), time(2, 30))  # 02:30 does not exist on 8 March 2026 in New York
    end = quiet_until(local(NEW_YORK, 2026, 3, 8, 1, 30), NEW_YORK, gap)
    assert end == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 03:30 EDT
    assert end is not None
    assert end.astimezone(NEW_YORK).hour == 3


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)),
    st.sampled_from([SHANGHAI, NEW_YORK, BERLIN, ZoneInfo("Australia/Lord_Howe")]),
    st.times(),
    st.times(),
)
def test_quiet_hours_end_in_the_future_and_outside_them(
    now: datetime, zone: ZoneInfo, start: time, end: time
) -> None:
    start, end = start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0)
    if start == end:
        return
    quiet = QuietHours(start, end)
    until = quiet_until(now, zone, quiet)
    if until is None:
        return
    assert until > now
    assert until - now <= timedelta(hours=25)  # at most one night (plus a DST hour)
    assert quiet_until(until, zone, quiet) is None or until.astimezone(zone).time() != end


# ---- due dates --------------------------------------------------------------------------------


def test_days_until_counts_on_the_customers_calendar() -> None:
    now = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)  # 2 June in Shanghai, 1 June in New York
    due = date(2026, 6, 11)
    assert days_until(due, now, SHANGHAI) == 9
    assert days_until(due, now, NEW_YORK) == 10
    assert is_due_soon(due, now, SHANGHAI, 9)
    assert not is_due_soon(due, now, NEW_YORK, 9)
    assert is_due_soon(date(2026, 5, 30), now, NEW_YORK, 0)  # overdue and still open


# ---- messages ---------------------------------------------------------------------------------


def test_message_bodies_carry_amounts_and_dates_only() -> None:
    bill = {"biller": "bil_cn_power", "amount_due": 12850, "currency": "CNY", "due_date": "2026-06-11"}
    assert (
        message_body("bill.due_soon", bill)
        == "Reminder: your bil_cn_power bill of 128.50 CNY is due on 2026-06-11."
    )
    assert "128.50 CNY" in message_body("bill.due_soon", bill, "zh-CN")
    account = {
        "id": "acct_1",
        "currency": "JPY",
        "balance": {"available": 900},
        "low_balance_threshold": 1000,
    }
    text = message_body("account.low_balance", account)
    assert "900 JPY" in text
    assert "1000 JPY" in text
    assert message_body("something.else", {}) == "payhub notice: something.else"
