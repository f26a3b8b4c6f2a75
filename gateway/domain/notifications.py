"""Customer notification preferences and the time arithmetic of reminders: pure, no I/O.

    validate_preferences(values, ...)  → Preferences, or InvalidPreference naming the field
    quiet_until(now, zone, quiet)      → when the customer's current quiet hours end (None: not quiet)
    days_until(due, now, zone)         → whole days from the customer's today to a due date
    message_body(event_type, data, …)  → the SMS / e-mail text for an event (no card data, no secrets)

Quiet hours are wall-clock times in the customer's time zone and may span midnight
(22:00-07:00). Their end is computed on the local calendar and then converted, so a DST change
during the night moves the UTC instant, never the wall-clock one; an end that falls in a DST gap
(02:30 on a spring-forward night) is taken with the offset before the gap, which lands just after
it. ``start == end`` is refused: "quiet all day" would delay messages forever.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal

import langcodes
import phonenumbers

from gateway.domain.money import Money, MoneyError, normalize_currency

Theme = Literal["light", "dark", "system"]
Channel = Literal["email", "sms", "push", "webhook"]
# Channels a customer chooses; webhooks always carry every event (they are the tenant's, not the person's).
PERSON_CHANNELS: Final = ("email", "sms", "push")
MESSAGE_CHANNELS: Final = ("email", "sms")  # the ones the message sender delivers today
THEMES: Final = ("light", "dark", "system")
MIN_LEAD_DAYS, MAX_LEAD_DAYS = 0, 60
MIN_FONT_SCALE, MAX_FONT_SCALE = 0.75, 2.0
DEFAULT_LOCALE = "en"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_THEME: Final[Theme] = "system"
DEFAULT_FONT_SCALE = 1.0
DEFAULT_LEAD_DAYS = 3

_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
# BCP 47 is hyphen-separated alphanumeric subtags of 1 to 8 characters; langcodes then checks
# that the language, script and region subtags are registered (it alone would accept "en_US").
_BCP47_SHAPE = re.compile(r"[A-Za-z0-9]{1,8}(-[A-Za-z0-9]{1,8})*")
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+")


class InvalidPreference(ValueError):
    """A preference value payhub refuses; ``param`` names the field (``quiet_hours.start``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time

    def render(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


@dataclass(frozen=True, slots=True)
class Preferences:
    locale: str = DEFAULT_LOCALE
    timezone: str = DEFAULT_TIMEZONE
    default_currency: str | None = None
    channels: tuple[str, ...] = ()  # chosen person channels (email, sms, push), sorted; never "webhook"
    email: str | None = None
    phone: str | None = None
    quiet_hours: QuietHours | None = None
    reminder_lead_days: int = DEFAULT_LEAD_DAYS
    theme: Theme = DEFAULT_THEME
    font_scale: float = DEFAULT_FONT_SCALE

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


# ---- validation -------------------------------------------------------------------------------


@functools.cache
def _zones() -> frozenset[str]:
    # Membership in the tz database's own list: user input never becomes a file path to probe.
    return frozenset(zoneinfo.available_timezones())


def check_locale(tag: str, *, param: str = "locale") -> str:
    if not _BCP47_SHAPE.fullmatch(tag) or not langcodes.tag_is_valid(tag):
        raise InvalidPreference(
            f"{param} must be a well-formed BCP 47 language tag such as 'en' or 'zh-CN'.", param=param
        )
    return tag


def check_timezone(name: str, *, param: str = "timezone") -> str:
    if name not in _zones():
        raise InvalidPreference(
            f"{param} must be an IANA time zone name such as 'Asia/Shanghai' or 'UTC'.", param=param
        )
    return name


def check_phone(value: str, *, param: str = "phone") -> str:
    """E.164 (``+`` and up to 15 digits) and a number that can exist; returned in E.164 form."""
    problem = f"{param} must be a valid phone number in E.164 form, e.g. +8613800138000."
    if not re.fullmatch(r"\+[1-9][0-9]{5,14}", value):
        raise InvalidPreference(problem, param=param)
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPreference(problem, param=param) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPreference(problem, param=param)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_email(value: str, *, param: str = "email") -> str:
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise InvalidPreference(f"{param} must be an e-mail address such as li@example.com.", param=param)
    return value


def parse_clock(value: str, *, param: str) -> time:
    match = _HHMM.fullmatch(value)
    if match is None:
        raise InvalidPreference(f"{param} must be a 24-hour time HH:MM, e.g. 22:00.", param=param)
    return time(int(match[1]), int(match[2]))


def check_quiet_hours(start: str, end: str, *, param: str = "quiet_hours") -> QuietHours:
    quiet = QuietHours(parse_clock(start, param=f"{param}.start"), parse_clock(end, param=f"{param}.end"))
    if quiet.start == quiet.end:
        raise InvalidPreference(
            f"{param}.end must differ from {param}.start (use null for no quiet hours).", param=f"{param}.end"
        )
    return quiet


def check_channels(channels: Sequence[str], *, param: str = "channels") -> tuple[str, ...]:
    chosen: set[str] = set()
    for index, channel in enumerate(channels):
        if channel == "webhook":  # always on; accepted so that what GET shows can be PUT back
            continue
        if channel not in PERSON_CHANNELS:
            raise InvalidPreference(
                f"{param} may hold only: email, sms, push (webhook is always on).", param=f"{param}.{index}"
            )
        chosen.add(channel)
    return tuple(sorted(chosen))


def validate_preferences(
    *,
    locale: str | None = None,
    timezone: str | None = None,
    default_currency: str | None = None,
    channels: Sequence[str] = (),
    email: str | None = None,
    phone: str | None = None,
    quiet_hours: tuple[str, str] | None = None,
    reminder_lead_days: int | None = None,
    theme: str | None = None,
    font_scale: float | None = None,
    default_lead_days: int = DEFAULT_LEAD_DAYS,
) -> Preferences:
    """The whole preferences object (PUT semantics: a field left out takes its default)."""
    currency = None
    if default_currency is not None:
        try:
            currency = normalize_currency(default_currency, param="default_currency")
        except MoneyError as exc:
            raise InvalidPreference(str(exc), param=exc.param) from exc
    lead = default_lead_days if reminder_lead_days is None else reminder_lead_days
    if isinstance(lead, bool) or not MIN_LEAD_DAYS <= lead <= MAX_LEAD_DAYS:
        raise InvalidPreference(
            f"reminder_lead_days must be an integer from {MIN_LEAD_DAYS} to {MAX_LEAD_DAYS}.",
            param="reminder_lead_days",
        )
    scale = DEFAULT_FONT_SCALE if font_scale is None else float(font_scale)
    if not MIN_FONT_SCALE <= scale <= MAX_FONT_SCALE:
        raise InvalidPreference(
            f"font_scale must be from {MIN_FONT_SCALE} to {MAX_FONT_SCALE}.", param="font_scale"
        )
    chosen_theme: Theme = DEFAULT_THEME
    if theme is not None:
        if theme not in THEMES:
            raise InvalidPreference("theme must be one of: light, dark, system.", param="theme")
        chosen_theme = theme  # type: ignore[assignment]  # checked just above
    prefs = Preferences(
        locale=DEFAULT_LOCALE if locale is None else check_locale(locale),
        timezone=DEFAULT_TIMEZONE if timezone is None else check_timezone(timezone),
        default_currency=currency,
        channels=check_channels(channels),
        email=None if email is None else check_email(email),
        phone=None if phone is None else check_phone(phone),
        quiet_hours=None if quiet_hours is None else check_quiet_hours(*quiet_hours),
        reminder_lead_days=lead,
        theme=chosen_theme,
        font_scale=scale,
    )
    if "sms" in prefs.channels and prefs.phone is None:
        raise InvalidPreference("channels includes sms: a phone number is required.", param="phone")
    if "email" in prefs.channels and prefs.email is None:
        raise InvalidPreference("channels includes email: an e-mail address is required.", param="email")
    return prefs


# ---- time arithmetic --------------------------------------------------------------------------


def _instant(day: date, at: time, zone: zoneinfo.ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``zone`` (fold 0: the first of a repeated
    hour; a time inside a DST gap maps to just after the gap)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def quiet_until(now: datetime, zone: zoneinfo.ZoneInfo, quiet: QuietHours | None) -> datetime | None:
    """If ``now`` (aware) is within the quiet hours in ``zone``, the UTC instant they end; else None."""
    if quiet is None:
        return None
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    today = local.date()
    if quiet.start < quiet.end:  # within one day: 01:00-06:00
        if quiet.start <= clock < quiet.end:
            return _instant(today, quiet.end, zone)
        return None
    # Spanning midnight (22:00-07:00): the evening part ends tomorrow, the morning part today.
    if clock >= quiet.start:
        return _instant(today + timedelta(days=1), quiet.end, zone)
    if clock < quiet.end:
        return _instant(today, quiet.end, zone)
    return None


def zone_of(name: str) -> zoneinfo.ZoneInfo:
    """The zone a saved preference names; UTC should the tz database no longer know it."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)


def days_until(due: date, now: datetime, zone: zoneinfo.ZoneInfo) -> int:
    """Whole days from the customer's local date at ``now`` to ``due`` (negative: overdue)."""
    return (due - now.astimezone(zone).date()).days


def is_due_soon(due: date, now: datetime, zone: zoneinfo.ZoneInfo, lead_days: int) -> bool:
    """A bill is due soon from ``lead_days`` before its due date on (overdue open bills included)."""
    return days_until(due, now, zone) <= lead_days


# ---- message bodies ----------------------------------------------------------------------------


def _money(amount: Any, currency: Any) -> str:
    try:
        return Money(int(amount), str(currency)).format()
    except (KeyError, TypeError, ValueError):
        return f"{amount} {currency}"


def message_body(event_type: str, data: Mapping[str, Any], locale: str = DEFAULT_LOCALE) -> str:
    """The text sent to a person for an event: amounts, dates and ids only (no card data, no
    customer params, no secrets). Chinese for ``zh*`` locales, English otherwise."""
    chinese = locale.lower().startswith("zh")
    if event_type == "bill.due_soon":
        amount = _money(data.get("amount_due"), data.get("currency"))
        biller, due = data.get("biller"), data.get("due_date")
        if chinese:
            return f"账单提醒：您在 {biller} 的账单 {amount} 将于 {due} 到期。"  # noqa: RUF001
        return f"Reminder: your {biller} bill of {amount} is due on {due}."
    if event_type == "account.low_balance":
        balance = data.get("balance")
        available = balance.get("available") if isinstance(balance, Mapping) else None
        currency = data.get("currency")
        left = _money(available, currency)
        threshold = _money(data.get("low_balance_threshold"), currency)
        if chinese:
            return f"余额提醒：账户 {data.get('id')} 可用余额 {left}，低于提醒金额 {threshold}。"  # noqa: RUF001
        return f"Low balance: account {data.get('id')} has {left} available, below your alert at {threshold}."
    return f"payhub notice: {event_type}"
