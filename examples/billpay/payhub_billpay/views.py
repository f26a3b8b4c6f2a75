"""Request handlers: parse the form, call the hub through the SDK, then render a page or redirect (PRG)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp_jinja2
import orjson
import segno
from aiohttp import web
from payhub_client import errors, webhooks

from .app import (
    DEVICE_ID,
    RUNTIME,
    USER,
    hub,
    login_required,
    mark_dirty,
    runtime,
    session,
    signed_in_user,
    start_session,
)
from .money import format_money, parse_amount
from .security import (
    DUMMY_HASH,
    hash_password,
    new_totp_secret,
    totp_step,
    totp_uri,
    verify_password,
)
from .store import LOCKOUT_SECONDS, User

log = logging.getLogger("payhub_billpay")

USERNAME = re.compile(r"^[a-z0-9_]{3,32}$")
PHONE = re.compile(r"^\+[1-9][0-9]{5,14}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
ACCOUNT_NUMBER = re.compile(r"^[0-9]{10}$")
CATEGORY_NAMES = {
    "electricity": "Electricity",
    "water": "Water",
    "gas": "Gas",
    "broadband": "Broadband",
    "telecom_prepaid": "Phone top-up",
    "telecom_postpaid": "Phone bill",
    "credit_card": "Credit card",
}
CATEGORY_ZH = {
    "electricity": "电费",
    "water": "水费",
    "gas": "燃气费",
    "broadband": "宽带",
    "telecom_prepaid": "话费充值",
    "telecom_postpaid": "手机账单",
    "credit_card": "信用卡还款",
}
PAGE_SIZE = 10
TERMINAL = {"succeeded", "failed", "canceled", "requires_capture", "under_review"}
WALLETS = {"alipay": "Alipay", "wechat_pay": "WeChat Pay", "paypal": "PayPal"}


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def form_str(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def qr_data_uri(text: str) -> str:
    return str(segno.make(text, error="m").svg_data_uri(scale=5, dark="#000", light="#fff"))


def mask_account(number: str) -> str:
    return f"••••{number[-4:]}" if len(number) > 4 else number


def current_user(request: web.Request) -> User:
    user: User = request[USER]
    return user


def customer_block(request: web.Request, user: User) -> dict[str, Any]:
    """Who pays, for the hub's risk engine: the customer id, phone for step-up, this browser as the device."""
    block: dict[str, Any] = {"id": user.customer_id, "phone": user.phone, "device_id": request[DEVICE_ID]}
    if user.email:
        block["email"] = user.email
    with contextlib.suppress(ValueError):
        block["ip"] = str(ipaddress.ip_address(request.remote or ""))
    return block


def error_text(exc: errors.PayhubError) -> str:
    message = exc.message or exc.code or "The payment service refused the request."
    return f"{message} (request {exc.request_id})" if exc.request_id else message


async def billers(request: web.Request) -> list[dict[str, Any]]:
    cached = request.app.get(BILLERS_CACHE)
    if cached and time.monotonic() - cached[0] < 600:
        return cached[1]
    found = [b.to_dict() async for b in hub(request).billers.list()]
    found.sort(key=lambda b: (b["category"], b["name"]))
    request.app[BILLERS_CACHE] = (time.monotonic(), found)
    return found


BILLERS_CACHE = web.AppKey("billers_cache", tuple)


async def biller_by_id(request: web.Request, biller_id: str) -> dict[str, Any] | None:
    return next((b for b in await billers(request) if b["id"] == biller_id), None)


async def first_n(iterator: Any, n: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    async for item in iterator:
        items.append(item.to_dict())
        if len(items) >= n:
            break
    return items


def render(template: str, request: web.Request, context: dict[str, Any], status: int = 200) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, context, status=status)


# ---- sign-up, TOTP enrolment, sign-in -----------------------------------------------------------------


async def signup_page(request: web.Request) -> web.Response:
    return render("signup.html", request, {"errors": [], "form": {}})


async def signup(request: web.Request) -> web.Response:
    form = await request.post()
    username, password = form_str(form, "username").lower(), form_str(form, "password")
    phone, email = form_str(form, "phone"), form_str(form, "email")
    problems = []
    if not USERNAME.fullmatch(username):
        problems.append("Username: 3 to 32 lower-case letters, digits or _.")
    if len(password) < 10:
        problems.append("Password: at least 10 characters.")
    if not PHONE.fullmatch(phone):
        problems.append("Mobile phone: international format, e.g. +8613800138000.")
    if email and not EMAIL.fullmatch(email):
        problems.append("E-mail: not an address.")
    rt = runtime(request)
    if not problems:
        pw_hash = await asyncio.to_thread(hash_password, password)
        if not rt.store.add_user(username, pw_hash, new_totp_secret(), phone, email or None):
            problems.append("That username is taken.")
    if problems:
        return render(
            "signup.html", request, {"errors": problems, "form": {"username": username, "phone": phone}}, 400
        )
    start_session(request, user=username, stage="enroll")
    return redirect("/enroll")


async def enroll_page(request: web.Request, error: str | None = None) -> web.Response:
    sess = session(request)
    user = runtime(request).store.user(sess.get("user") or "") if sess.get("stage") == "enroll" else None
    if user is None:
        return redirect("/login")
    uri = totp_uri(user.totp_secret, user.username)
    secret_groups = " ".join(user.totp_secret[i : i + 4] for i in range(0, len(user.totp_secret), 4))
    return render(
        "enroll.html",
        request,
        {"qr": qr_data_uri(uri), "secret": user.totp_secret, "secret_groups": secret_groups, "error": error},
        400 if error else 200,
    )


async def enroll(request: web.Request) -> web.Response:
    sess = session(request)
    rt = runtime(request)
    user = rt.store.user(sess.get("user") or "") if sess.get("stage") == "enroll" else None
    if user is None:
        return redirect("/login")
    form = await request.post()
    step = totp_step(user.totp_secret, form_str(form, "code"))
    if step is None:
        return await enroll_page(
            request, "That code did not match. Check the time on your phone and try again."
        )
    rt.store.set_enrolled(user.username, step)
    # The user's hub objects: a CNY stored-balance account and the phone for SMS step-up codes.
    if user.account_id is None:
        account = await hub(request).accounts.create("CNY", customer=user.customer_id)
        rt.store.set_account(user.username, account.id)
    start_session(request, user=user.username, stage="full")
    return redirect("/")


async def login_page(request: web.Request) -> web.Response:
    return render("login.html", request, {"error": None, "username": ""})


def locked_message() -> str:
    return f"Too many failed attempts. Try again in {LOCKOUT_SECONDS // 60} minutes."


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    username, password = form_str(form, "username").lower(), form_str(form, "password")
    rt = runtime(request)
    user = rt.store.user(username)
    ok = await asyncio.to_thread(verify_password, password, user.password_hash if user else DUMMY_HASH)
    error = None
    if user is not None and user.locked():
        error = locked_message()
    elif user is None or not ok:
        if user is not None:
            rt.store.record_failure(username)
            error = locked_message() if rt.store.user(username).locked() else None  # type: ignore[union-attr]
        error = error or "Wrong username or password."
    if error:
        return render("login.html", request, {"error": error, "username": username}, 401)
    assert user is not None
    if not user.totp_enrolled:
        start_session(request, user=username, stage="enroll")
        return redirect("/enroll")
    start_session(request, user=username, stage="totp")
    return redirect("/login/code")


async def login_code_page(request: web.Request) -> web.Response:
    if session(request).get("stage") != "totp":
        return redirect("/login")
    return render("login_code.html", request, {"error": None})


async def login_code(request: web.Request) -> web.Response:
    sess = session(request)
    rt = runtime(request)
    user = rt.store.user(sess.get("user") or "") if sess.get("stage") == "totp" else None
    if user is None:
        return redirect("/login")
    form = await request.post()
    if user.locked():
        return render("login_code.html", request, {"error": locked_message()}, 401)
    step = totp_step(user.totp_secret, form_str(form, "code"))
    if step is None or not rt.store.use_totp_step(user.username, step):
        rt.store.record_failure(user.username)
        locked = rt.store.user(user.username).locked()  # type: ignore[union-attr]
        error = locked_message() if locked else "That code did not match, or was used already."
        return render("login_code.html", request, {"error": error}, 401)
    rt.store.reset_failures(user.username)
    start_session(request, user=user.username, stage="full")
    return redirect("/")


async def logout(request: web.Request) -> web.Response:
    start_session(request)
    return redirect("/login")


# ---- home ----------------------------------------------------------------------------------------------


async def upcoming_bills(request: web.Request, user: User) -> list[dict[str, Any]]:
    """Open bills of the user's saved accounts and bill reminders, soonest first."""
    rt = runtime(request)
    wanted: dict[tuple[str, str], str] = {}
    for saved in rt.store.bill_accounts(user.username):
        wanted[(saved["biller"], saved["account_number"])] = saved["nickname"]
    async for reminder in hub(request).reminders.list(customer=user.customer_id):
        r = reminder.to_dict()
        number = (r.get("customer_params") or {}).get("account_number")
        if r.get("type") == "bill_due" and r.get("biller") and number:
            wanted.setdefault((r["biller"], number), "")
    found: list[dict[str, Any]] = []
    for (biller_id, number), nickname in list(wanted.items())[:6]:
        biller = await biller_by_id(request, biller_id)
        try:
            bills = await hub(request).bills.fetch(biller_id, {"account_number": number})
        except errors.PayhubError:
            continue
        for bill in bills:
            b = bill.to_dict()
            b.update(
                biller_name=(biller or {}).get("name", biller_id),
                account_number=number,
                masked=mask_account(number),
                nickname=nickname,
            )
            found.append(b)
    found.sort(key=lambda b: str(b.get("due_date")))
    return found


@login_required
async def home(request: web.Request) -> web.Response:
    user = current_user(request)
    client = hub(request)
    account = (await client.accounts.get(user.account_id)).to_dict() if user.account_id else None
    recent = await first_n(client.payments.list(customer=user.customer_id, limit=5), 5)
    upcoming = await upcoming_bills(request, user)
    return render("home.html", request, {"account": account, "recent": recent, "upcoming": upcoming})


# ---- bills ---------------------------------------------------------------------------------------------


def method_choices(request: web.Request, user: User) -> dict[str, Any]:
    return {"cards": runtime(request).store.cards(user.username), "wallets": WALLETS}


@login_required
async def bills_page(request: web.Request) -> web.Response:
    user = current_user(request)
    catalog = await billers(request)
    categories: dict[str, list[dict[str, Any]]] = {}
    for b in catalog:
        categories.setdefault(b["category"], []).append(b)
    names = {b["id"]: b["name"] for b in catalog}
    saved = [
        dict(s, biller_name=names.get(s["biller"], s["biller"]), masked=mask_account(s["account_number"]))
        for s in runtime(request).store.bill_accounts(user.username)
    ]
    return render(
        "bills.html",
        request,
        {
            "categories": categories,
            "category_names": CATEGORY_NAMES,
            "category_names_zh": CATEGORY_ZH,
            "saved": saved,
            "selected": request.query.get("biller", ""),
            "error": None,
            "phone_billers": [b for b in catalog if b["category"] == "telecom_prepaid"],
            **method_choices(request, user),
        },
    )


@login_required
async def bill_fetch(request: web.Request) -> web.Response:
    user = current_user(request)
    biller_id = request.query.get("biller", "")
    number = request.query.get("account_number", "").strip()
    biller = await biller_by_id(request, biller_id)
    error = None
    bills: list[dict[str, Any]] = []
    if biller is None:
        error = "Choose a biller."
    elif not ACCOUNT_NUMBER.fullmatch(number):
        error = "The account number has 10 digits."
    else:
        try:
            bills = [
                b.to_dict() for b in await hub(request).bills.fetch(biller_id, {"account_number": number})
            ]
        except errors.PayhubError as exc:
            error = "No bill is due on this account." if exc.code == "bill_not_found" else error_text(exc)
    if error:
        return render("bill_error.html", request, {"error": error, "biller": biller_id}, 400)
    return render(
        "bill.html",
        request,
        {
            "biller": biller,
            "account_number": number,
            "masked": mask_account(number),
            "bills": bills,
            "saved": any(
                s["biller"] == biller_id and s["account_number"] == number
                for s in runtime(request).store.bill_accounts(user.username)
            ),
            "error": None,
            **method_choices(request, user),
        },
    )


@login_required
async def bill_save(request: web.Request) -> web.Response:
    user = current_user(request)
    form = await request.post()
    biller_id, number = form_str(form, "biller"), form_str(form, "account_number")
    biller = await biller_by_id(request, biller_id)
    if biller is None or not ACCOUNT_NUMBER.fullmatch(number):
        raise web.HTTPBadRequest(text="Unknown biller or account number.")
    nickname = form_str(form, "nickname")[:40] or biller["name"]
    runtime(request).store.save_bill_account(user.username, biller_id, number, nickname)
    return redirect(f"/bills/fetch?biller={biller_id}&account_number={number}")


async def payment_method_from_form(  # noqa: PLR0912 (one branch per payment method)
    request: web.Request, user: User, form: Any, allow_balance: bool = True, allow_wallet: bool = True
) -> tuple[dict[str, Any], str]:
    """The hub payment_method block and a label for the confirmation page. A new card is vaulted first
    (the hub returns a token), so no card number is ever put back in a page."""
    rt = runtime(request)
    kind, _, token = form_str(form, "method").partition(":")
    if kind == "saved_card":
        card = rt.store.card(user.username, token)
        if card is None:
            raise ValueError("Choose one of your saved cards.")
        return {"type": "card", "card": {"token": card["token"]}}, f"{card['brand']} •••• {card['last4']}"
    if kind == "new_card":
        number = re.sub(r"[\s-]", "", form_str(form, "card_number"))
        exp = form_str(form, "card_exp")
        cvc = form_str(form, "card_cvc")
        match = re.fullmatch(r"(\d{1,2})\s*/\s*(\d{2}|\d{4})", exp)
        if not (number.isdigit() and 12 <= len(number) <= 19):
            raise ValueError("Card number: 12 to 19 digits.")
        if match is None:
            raise ValueError("Expiry: MM/YY.")
        if not (cvc.isdigit() and len(cvc) in (3, 4)):
            raise ValueError("Security code: 3 or 4 digits.")
        month, year = int(match.group(1)), int(match.group(2))
        year = year + 2000 if year < 100 else year
        try:
            token = (
                await hub(request).tokens.create(
                    card={"number": number, "exp_month": month, "exp_year": year, "cvc": cvc}
                )
            ).to_dict()
        except errors.PayhubError as exc:
            raise ValueError(error_text(exc)) from exc
        card = token.get("card") or {}
        brand = str(card.get("brand", "card")).title()
        last4 = str(card.get("last4", number[-4:]))
        rt.store.save_card(user.username, token["id"], brand, last4, f"{month:02d}/{year % 100:02d}")
        return {"type": "card", "card": {"token": token["id"]}}, f"{brand} •••• {last4}"
    if kind == "balance" and allow_balance:
        if not user.account_id:
            raise ValueError("You have no balance account.")
        return {"type": "balance", "balance": {"account": user.account_id}}, "Balance"
    if kind == "wallet" and allow_wallet:
        provider = form_str(form, "wallet")
        if provider not in WALLETS:
            raise ValueError("Choose an e-wallet.")
        return {"type": "wallet", "wallet": {"provider": provider}}, WALLETS[provider]
    if kind == "bank_transfer" and not allow_wallet:
        number = form_str(form, "bank_account")
        if not re.fullmatch(r"[0-9]{6,34}", number):
            raise ValueError("Bank account number: 6 to 34 digits.")
        return {"type": "bank_transfer", "bank_transfer": {"account_number": number}}, (
            f"Bank transfer from {mask_account(number)}"
        )
    raise ValueError("Choose a payment method.")


async def checked_method(
    request: web.Request, user: User, form: Any, error: str | None
) -> tuple[dict[str, Any], str, str | None]:
    """The form's payment method when the rest of the form is fine: (method, label, error)."""
    if error is not None:
        return {}, "", error
    try:
        method, label = await payment_method_from_form(request, user, form)
    except ValueError as exc:
        return {}, "", str(exc)
    return method, label, None


@login_required
async def bill_review(request: web.Request) -> web.Response:
    user = current_user(request)
    form = await request.post()
    biller_id, number = form_str(form, "biller"), form_str(form, "account_number")
    biller = await biller_by_id(request, biller_id)
    if biller is None or not ACCOUNT_NUMBER.fullmatch(number):
        raise web.HTTPBadRequest(text="Unknown biller or account number.")
    try:
        bills = [b.to_dict() for b in await hub(request).bills.fetch(biller_id, {"account_number": number})]
    except errors.PayhubError as exc:
        return render("bill_error.html", request, {"error": error_text(exc), "biller": biller_id}, 400)
    bill = next(
        (b for b in bills if b["bill_ref"] == form_str(form, "bill_ref")), bills[0] if bills else None
    )
    if bill is None:
        return render("bill_error.html", request, {"error": "No bill is due.", "biller": biller_id}, 400)
    amount = parse_amount(form_str(form, "amount"), bill["currency"])
    error = None
    exactness = biller["amount_exactness"]
    if amount is None:
        error = "Amount: a positive number, e.g. 128.50."
    elif exactness == "exact" and amount != bill["amount_due"]:
        error = "This biller takes exactly the amount due."
    elif exactness == "exact_or_above" and amount < bill["amount_due"]:
        error = "Pay at least the amount due."
    elif exactness == "exact_or_below" and amount > bill["amount_due"]:
        error = "Pay at most the amount due."
    method, label, error = await checked_method(request, user, form, error)
    if error:
        return render(
            "bill.html",
            request,
            {
                "biller": biller,
                "account_number": number,
                "masked": mask_account(number),
                "bills": bills,
                "saved": True,
                "error": error,
                **method_choices(request, user),
            },
            400,
        )
    session(request)["draft"] = {
        "biller": biller_id,
        "biller_name": biller["name"],
        "account_number": number,
        "bill_ref": bill["bill_ref"],
        "customer_name": bill["customer_name"],
        "due_date": str(bill["due_date"]),
        "amount": amount,
        "amount_due": bill["amount_due"],
        "currency": bill["currency"],
        "method": method,
        "method_label": label,
    }
    mark_dirty(request)
    return redirect("/bills/confirm")


def mask_phone(msisdn: str) -> str:
    return f"{msisdn[:6]}•••••{msisdn[-3:]}" if len(msisdn) > 9 else msisdn


@login_required
async def phone_review(request: web.Request) -> web.Response:
    """A phone top-up: a bill payment to a telecom_prepaid biller, for one of its denominations."""
    user = current_user(request)
    form = await request.post()
    biller = await biller_by_id(request, form_str(form, "biller"))
    if biller is None or biller["category"] != "telecom_prepaid":
        raise web.HTTPBadRequest(text="Unknown operator.")
    msisdn = re.sub(r"[\s-]", "", form_str(form, "msisdn"))
    amount = int(form_str(form, "denomination")) if form_str(form, "denomination").isdigit() else 0
    error = None
    if not PHONE.fullmatch(msisdn):
        error = "Phone number: + and the country code, e.g. +8613812345678."
    elif amount not in biller.get("denominations", []):
        error = "Choose one of the amounts offered."
    method, label, error = await checked_method(request, user, form, error)
    if error:
        return render("bill_error.html", request, {"error": error, "biller": biller["id"]}, 400)
    session(request)["draft"] = {
        "kind": "phone",
        "biller": biller["id"],
        "biller_name": biller["name"],
        "msisdn": msisdn,
        "amount": amount,
        "amount_due": amount,
        "currency": biller["currency"],
        "method": method,
        "method_label": label,
    }
    mark_dirty(request)
    return redirect("/bills/confirm")


@login_required
async def bill_confirm_page(request: web.Request) -> web.Response:
    draft = session(request).get("draft")
    if not draft:
        return redirect("/bills")
    masked = (
        mask_phone(draft["msisdn"]) if draft.get("kind") == "phone" else mask_account(draft["account_number"])
    )
    return render("confirm.html", request, {"draft": draft, "masked": masked})


async def wait_settled(request: web.Request, payment_id: str, seconds: float = 8.0) -> dict[str, Any]:
    """Bill payments post to the biller after the money is collected: wait a little for a final answer."""
    deadline = time.monotonic() + seconds
    while True:
        payment = (await hub(request).payments.get(payment_id)).to_dict()
        if payment["status"] in TERMINAL or payment["status"] == "requires_action":
            return payment
        if time.monotonic() > deadline:
            return payment
        await asyncio.sleep(0.3)


def after_payment(payment: dict[str, Any]) -> str:
    action = payment.get("next_action") or {}
    if payment["status"] == "requires_action" and action.get("type") == "otp":
        return f"/payments/{payment['id']}/verify"
    return f"/payments/{payment['id']}"


@login_required
async def bill_pay(request: web.Request) -> web.Response:
    user = current_user(request)
    draft = session(request).pop("draft", None)
    mark_dirty(request)
    if not draft:
        return redirect("/bills")
    if draft.get("kind") == "phone":
        bill: dict[str, Any] = {"biller": draft["biller"], "customer_params": {"msisdn": draft["msisdn"]}}
        description, shown = f"{draft['biller_name']} top-up", mask_phone(draft["msisdn"])
    else:
        bill = {
            "biller": draft["biller"],
            "customer_params": {"account_number": draft["account_number"]},
            "bill_ref": draft["bill_ref"],
        }
        description, shown = f"{draft['biller_name']} bill", mask_account(draft["account_number"])
    try:
        payment = await hub(request).payments.create(
            amount=draft["amount"],
            currency=draft["currency"],
            payment_method=draft["method"],
            customer=customer_block(request, user),
            bill=bill,
            description=description,
            metadata={"biller": draft["biller"], "account": shown},
        )
    except errors.PayhubError as exc:
        return render("bill_error.html", request, {"error": error_text(exc), "biller": draft["biller"]}, 400)
    p = payment.to_dict()
    if p["status"] not in TERMINAL and p["status"] != "requires_action":
        p = await wait_settled(request, p["id"])
    return redirect(after_payment(p))


@login_required
async def verify_page(request: web.Request) -> web.Response:
    user = current_user(request)
    payment = await own_payment(request, user)
    if payment["status"] != "requires_action":
        return redirect(f"/payments/{payment['id']}")
    return render("verify.html", request, {"payment": payment, "error": None})


@login_required
async def verify(request: web.Request) -> web.Response:
    user = current_user(request)
    payment = await own_payment(request, user)
    form = await request.post()
    code = form_str(form, "otp")
    if not re.fullmatch(r"[0-9]{6}", code):
        return await render_verify(request, payment, "The code has 6 digits.")
    try:
        confirmed = (await hub(request).payments.confirm(payment["id"], otp=code)).to_dict()
    except errors.PayhubError as exc:
        return await render_verify(request, payment, error_text(exc))
    if confirmed["status"] not in TERMINAL:
        confirmed = await wait_settled(request, confirmed["id"])
    return redirect(f"/payments/{confirmed['id']}")


async def render_verify(request: web.Request, payment: dict[str, Any], error: str) -> web.Response:
    payment = (await hub(request).payments.get(payment["id"])).to_dict()
    if payment["status"] != "requires_action":
        return redirect(f"/payments/{payment['id']}")
    return render("verify.html", request, {"payment": payment, "error": error}, 400)


async def own_payment(request: web.Request, user: User) -> dict[str, Any]:
    """The payment if it is this user's; 404 otherwise (the app's tenant sees every user's payments)."""
    payment_id = request.match_info["id"]
    if not re.fullmatch(r"pay_[A-Za-z0-9]{1,64}", payment_id):
        raise web.HTTPNotFound(text="No such payment.")
    try:
        payment = (await hub(request).payments.get(payment_id)).to_dict()
    except errors.PayhubError as exc:
        raise web.HTTPNotFound(text="No such payment.") from exc
    customer = payment.get("customer") or {}
    owner = customer.get("id") if isinstance(customer, dict) else customer
    if owner != user.customer_id and payment.get("destination") != user.account_id:
        raise web.HTTPNotFound(text="No such payment.")
    return payment


@login_required
async def payment_detail(request: web.Request) -> web.Response:
    user = current_user(request)
    payment = await own_payment(request, user)
    action = payment.get("next_action") or {}
    qr = qr_data_uri(str(action["data"])) if action.get("type") == "qr_code" and action.get("data") else None
    biller = None
    posting = payment.get("bill_posting") or {}
    biller_id = (payment.get("metadata") or {}).get("biller")  # the hub's payment does not echo the bill
    if isinstance(biller_id, str):
        biller = await biller_by_id(request, biller_id)
    refunds = (
        await first_n(hub(request).refunds.list(payment=payment["id"], limit=20), 20)
        if payment.get("amount_refunded")
        else []
    )
    return render(
        "payment.html",
        request,
        {
            "payment": payment,
            "qr": qr,
            "action": action,
            "posting": posting,
            "biller": biller,
            "refunds": refunds,
        },
    )


# ---- history -------------------------------------------------------------------------------------------


def day_start(text: str, end: bool = False) -> str | None:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if end:
        moment += timedelta(days=1, seconds=-1)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@login_required
async def history(request: web.Request) -> web.Response:  # noqa: PLR0912 (one branch per filter)
    user = current_user(request)
    q = request.query
    filters: dict[str, Any] = {"customer": user.customer_id}
    problems = []
    if q.get("status"):
        filters["status"] = q["status"]
    if q.get("method"):
        filters["method"] = q["method"]
    for name, end in (("created_gte", False), ("created_lte", True)):
        if q.get(name):
            value = day_start(q[name], end)
            if value is None:
                problems.append(f"{name}: a date, YYYY-MM-DD.")
            else:
                filters[name] = value
    for name in ("amount_gte", "amount_lte"):
        if q.get(name):
            minor = parse_amount(q[name], "CNY")
            if minor is None:
                problems.append(f"{name}: an amount, e.g. 100.00.")
            else:
                filters[name] = minor
    cursor = q.get("starting_after", "")
    if cursor and re.fullmatch(r"pay_[A-Za-z0-9]{1,64}", cursor):
        filters["starting_after"] = cursor
    before = q.get("ending_before", "")
    if before and re.fullmatch(r"pay_[A-Za-z0-9]{1,64}", before) and "starting_after" not in filters:
        filters["ending_before"] = before
    payments: list[dict[str, Any]] = []
    has_more = False
    error = None
    if not problems:
        try:
            page = await hub(request).payments.list(limit=PAGE_SIZE, **filters).first_page()
            payments, has_more = [p.to_dict() for p in page.data], page.has_more
        except errors.PayhubError as exc:
            error = error_text(exc)
    keep = {k: v for k, v in q.items() if k not in ("starting_after", "ending_before") and v}
    backwards = "ending_before" in filters
    older = payments and (has_more or backwards)
    newer = payments and ((cursor and not backwards) or (backwards and has_more))
    next_query = dict(keep, starting_after=payments[-1]["id"]) if older else None
    prev_query = dict(keep, ending_before=payments[0]["id"]) if newer else None
    return render(
        "history.html",
        request,
        {
            "payments": payments,
            "filters": q,
            "problems": problems,
            "error": error,
            "next_query": next_query,
            "prev_query": prev_query,
            "first_query": keep if (cursor or before) else None,
            "statuses": ["succeeded", "processing", "requires_action", "under_review", "failed", "canceled"],
            "methods": ["card", "balance", "wallet", "bank_transfer", "prepaid"],
        },
    )


# ---- balance -------------------------------------------------------------------------------------------


@login_required
async def balance_page(request: web.Request) -> web.Response:
    return await render_balance(request)


async def render_balance(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    user = current_user(request)
    account = (await hub(request).accounts.get(user.account_id)).to_dict() if user.account_id else None
    entries = await first_n(hub(request).accounts.entries(user.account_id), 25) if user.account_id else []
    return render(
        "balance.html",
        request,
        {
            "account": account,
            "entries": entries,
            "error": error,
            "done": request.query.get("topup"),
            "cards": runtime(request).store.cards(user.username),
        },
        status,
    )


@login_required
async def topup(request: web.Request) -> web.Response:
    user = current_user(request)
    if not user.account_id:
        raise web.HTTPBadRequest(text="No balance account.")
    form = await request.post()
    amount = parse_amount(form_str(form, "amount"), "CNY")
    if amount is None:
        return await render_balance(request, "Amount: a positive number, e.g. 500.00.", 400)
    try:
        method, _label = await payment_method_from_form(
            request, user, form, allow_balance=False, allow_wallet=False
        )
        payment = await hub(request).accounts.topup(
            user.account_id, amount=amount, currency="CNY", payment_method=method
        )
    except ValueError as exc:
        return await render_balance(request, str(exc), 400)
    except errors.PayhubError as exc:
        return await render_balance(request, error_text(exc), 400)
    p = payment.to_dict()
    if p["status"] not in TERMINAL:
        p = await wait_settled(request, p["id"], seconds=3)
    return redirect(f"/balance?topup={p['id']}")


# ---- reminders -----------------------------------------------------------------------------------------


@login_required
async def reminders_page(request: web.Request) -> web.Response:
    return await reminder_error(request, None)


async def reminder_error(request: web.Request, error: str | None) -> web.Response:
    user = current_user(request)
    items = [r.to_dict() async for r in hub(request).reminders.list(customer=user.customer_id)]
    catalog = await billers(request)
    names = {b["id"]: b["name"] for b in catalog}
    return render(
        "reminders.html",
        request,
        {
            "reminders": [r for r in items if r.get("status", "active") == "active"],
            "names": names,
            "billers": [
                b
                for b in catalog
                if b["customer_params"] and b["customer_params"][0]["name"] == "account_number"
            ],
            "error": error,
        },
        400 if error else 200,
    )


@login_required
async def reminder_create(request: web.Request) -> web.Response:
    user = current_user(request)
    form = await request.post()
    kind = form_str(form, "type")
    body: dict[str, Any]
    if kind == "bill_due":
        number = form_str(form, "account_number")
        if not ACCOUNT_NUMBER.fullmatch(number):
            return await reminder_error(request, "The account number has 10 digits.")
        body = {
            "type": "bill_due",
            "customer": user.customer_id,
            "biller": form_str(form, "biller"),
            "customer_params": {"account_number": number},
        }
        lead = form_str(form, "lead_days")
        if lead:
            if not lead.isdigit() or int(lead) > 60:
                return await reminder_error(request, "Days before: 0 to 60.")
            body["lead_days"] = int(lead)
    elif kind == "low_balance":
        threshold = parse_amount(form_str(form, "threshold"), "CNY")
        if threshold is None or not user.account_id:
            return await reminder_error(request, "Threshold: a positive amount, e.g. 50.00.")
        body = {
            "type": "low_balance",
            "customer": user.customer_id,
            "account": user.account_id,
            "threshold": threshold,
        }
    else:
        return await reminder_error(request, "Choose a reminder type.")
    try:
        await hub(request).reminders.create(**body)
    except errors.PayhubError as exc:
        message = (
            "You already have a low-balance alert." if exc.code == "reminder_exists" else error_text(exc)
        )
        return await reminder_error(request, message)
    return redirect("/reminders")


@login_required
async def reminder_delete(request: web.Request) -> web.Response:
    user = current_user(request)
    reminder_id = request.match_info["id"]
    mine = {r.id async for r in hub(request).reminders.list(customer=user.customer_id)}
    if reminder_id not in mine:
        raise web.HTTPNotFound(text="No such reminder.")
    await hub(request).reminders.delete(reminder_id)
    return redirect("/reminders")


# ---- notifications (fed by the hub's signed webhooks) -----------------------------------------------------


@login_required
async def notifications_page(request: web.Request) -> web.Response:
    user = current_user(request)
    return render(
        "notifications.html", request, {"items": runtime(request).store.notifications(user.username)}
    )


def summarize(event: dict[str, Any]) -> str:
    obj = event.get("data", {}).get("object", {}) or {}
    kind = event.get("type", "")
    amount = (
        format_money(obj.get("amount"), obj.get("currency")) if isinstance(obj.get("amount"), int) else ""
    )
    if kind.startswith("payment."):
        what = f" ({obj['description']})" if obj.get("description") else ""
        if obj.get("destination"):
            what = " top-up to your balance"
        failure = obj.get("failure") or {}
        reason = f" ({failure.get('code')})" if failure.get("code") else ""
        return f"Payment {kind.split('.', 1)[1].replace('_', ' ')}: {amount}{what}{reason}"
    if kind == "account.low_balance":
        balance = obj.get("balance") or {}
        return f"Low balance: {format_money(balance.get('available'), obj.get('currency'))} available"
    if kind == "bill.due_soon":
        return f"Bill due soon: {amount} to {obj.get('biller')} on {obj.get('due_date')}"
    if kind == "bill.posted":
        return f"Bill posted to {obj.get('biller', 'the biller')}"
    return kind.replace(".", " ").replace("_", " ").capitalize()


async def webhook_receiver(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    payload = await request.read()
    header = request.headers.get("Payhub-Signature", "")
    try:
        webhooks.verify(payload, header, rt.webhook_secrets)
    except webhooks.SignatureVerificationError:
        return web.Response(status=400, text="bad signature")
    event = orjson.loads(payload)
    obj = (event.get("data") or {}).get("object") or {}
    customer = obj.get("customer")
    customer_id = customer.get("id") if isinstance(customer, dict) else customer
    user = rt.store.user_by_customer(customer_id) if isinstance(customer_id, str) else None
    if user is None:
        account_id = obj.get("destination") or (obj.get("id") if obj.get("object") == "account" else None)
        account_id = account_id or obj.get("account")
        if isinstance(account_id, str):
            user = rt.store.user_by_account(account_id)
    if user is not None:
        rt.store.add_notification(
            event_id=str(event.get("id")),
            username=user.username,
            type_=str(event.get("type")),
            summary=summarize(event),
            object_id=obj.get("id") if isinstance(obj.get("id"), str) else None,
            created=str(event.get("created", "")),
        )
    # 2xx for every verified event, ours or not: the hub must not retry what we chose to ignore.
    return web.Response(status=204)


# ---- preferences ---------------------------------------------------------------------------------------


@login_required
async def preferences_page(request: web.Request) -> web.Response:
    return await preferences_error(request, None)


async def preferences_error(request: web.Request, error: str | None) -> web.Response:
    user = current_user(request)
    prefs = (await hub(request).preferences.get(user.customer_id)).to_dict()
    return render(
        "preferences.html",
        request,
        {"p": prefs, "error": error, "saved": request.query.get("saved"), "user": user},
        400 if error else 200,
    )


@login_required
async def preferences_save(request: web.Request) -> web.Response:
    user = current_user(request)
    form = await request.post()
    current = (await hub(request).preferences.get(user.customer_id)).to_dict()
    theme = form_str(form, "theme")
    locale = form_str(form, "locale")
    try:
        scale = float(form_str(form, "font_scale") or "1")
    except ValueError:
        scale = 0
    channels = [c for c in form.getall("channels", []) if c in ("email", "sms", "push")]
    if "email" in channels and not user.email:
        channels.remove("email")
    fields: dict[str, Any] = {
        "locale": locale if locale in ("en", "zh-CN") else "en",
        "theme": theme if theme in ("light", "dark", "system") else "system",
        "font_scale": scale,
        "channels": channels,
        "phone": user.phone,
        "timezone": current.get("timezone") or "Asia/Shanghai",
        "reminder_lead_days": current.get("reminder_lead_days", 3),
        "default_currency": "CNY",
    }
    if user.email:
        fields["email"] = user.email
    start, end = form_str(form, "quiet_start"), form_str(form, "quiet_end")
    if start and end:
        fields["quiet_hours"] = {"start": start, "end": end}
    elif start or end:
        return await preferences_error(request, "Quiet hours need both a start and an end.")
    if not 0.75 <= scale <= 2.0:
        return await preferences_error(request, "Text size: 75 % to 200 %.")
    try:
        saved = await hub(request).preferences.put(user.customer_id, **fields)
    except errors.PayhubError as exc:
        return await preferences_error(request, error_text(exc))
    runtime(request).prefs_cache[user.username] = (time.monotonic(), saved.to_dict())
    return redirect("/preferences?saved=1")


async def root_redirect(request: web.Request) -> web.Response:
    return redirect("/" if signed_in_user(request) else "/login")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/signup", signup_page)
    r.add_post("/signup", signup)
    r.add_get("/enroll", enroll_page)
    r.add_post("/enroll", enroll)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_get("/login/code", login_code_page)
    r.add_post("/login/code", login_code)
    r.add_post("/logout", logout)
    r.add_get("/bills", bills_page)
    r.add_get("/bills/fetch", bill_fetch)
    r.add_post("/bills/save", bill_save)
    r.add_post("/bills/review", bill_review)
    r.add_post("/bills/phone", phone_review)
    r.add_get("/bills/confirm", bill_confirm_page)
    r.add_post("/bills/pay", bill_pay)
    r.add_get("/payments/{id}", payment_detail)
    r.add_get("/payments/{id}/verify", verify_page)
    r.add_post("/payments/{id}/verify", verify)
    r.add_get("/history", history)
    r.add_get("/balance", balance_page)
    r.add_post("/balance/topup", topup)
    r.add_get("/reminders", reminders_page)
    r.add_post("/reminders", reminder_create)
    r.add_post("/reminders/{id}/delete", reminder_delete)
    r.add_get("/notifications", notifications_page)
    r.add_get("/preferences", preferences_page)
    r.add_post("/preferences", preferences_save)
    r.add_post("/webhooks/payhub", webhook_receiver)
