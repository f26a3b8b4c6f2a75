"""The app's own small SQLite store: app users, saved bill accounts, card tokens, the notification inbox.

Money never lives here: balances, payments and reminders are the hub's. This file holds what only the
app knows (who may sign in, which hub customer and account belong to whom, what the user saved).
Calls are short and local, so they run inline on the event loop.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    totp_secret TEXT NOT NULL,
    totp_enrolled INTEGER NOT NULL DEFAULT 0,
    totp_last_step INTEGER NOT NULL DEFAULT 0,
    phone TEXT NOT NULL,
    email TEXT,
    account_id TEXT,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS saved_bills (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL REFERENCES users(username),
    biller TEXT NOT NULL,
    account_number TEXT NOT NULL,
    nickname TEXT NOT NULL,
    UNIQUE (username, biller, account_number)
);
CREATE TABLE IF NOT EXISTS cards (
    token TEXT NOT NULL,
    username TEXT NOT NULL REFERENCES users(username),
    brand TEXT NOT NULL,
    last4 TEXT NOT NULL,
    exp TEXT NOT NULL,
    PRIMARY KEY (username, token)
);
CREATE TABLE IF NOT EXISTS notifications (
    event_id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    type TEXT NOT NULL,
    summary TEXT NOT NULL,
    object_id TEXT,
    created TEXT NOT NULL,
    received REAL NOT NULL
);
"""

LOCKOUT_THRESHOLD = 5
LOCKOUT_SECONDS = 15 * 60


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    totp_secret: str
    totp_enrolled: bool
    totp_last_step: int
    phone: str
    email: str | None
    account_id: str | None
    failed_attempts: int
    locked_until: float

    @property
    def customer_id(self) -> str:
        return f"cus_{self.username}"

    def locked(self, now: float | None = None) -> bool:
        return self.locked_until > (now if now is not None else time.time())


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # users
    def add_user(
        self, username: str, password_hash: str, totp_secret: str, phone: str, email: str | None
    ) -> bool:
        try:
            self._db.execute(
                "INSERT INTO users (username, password_hash, totp_secret, phone, email, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (username, password_hash, totp_secret, phone, email, time.time()),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def user(self, username: str) -> User | None:
        row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        return User(
            username=row["username"],
            password_hash=row["password_hash"],
            totp_secret=row["totp_secret"],
            totp_enrolled=bool(row["totp_enrolled"]),
            totp_last_step=row["totp_last_step"],
            phone=row["phone"],
            email=row["email"],
            account_id=row["account_id"],
            failed_attempts=row["failed_attempts"],
            locked_until=row["locked_until"],
        )

    def user_by_customer(self, customer_id: str) -> User | None:
        if not customer_id.startswith("cus_"):
            return None
        return self.user(customer_id.removeprefix("cus_"))

    def user_by_account(self, account_id: str) -> User | None:
        row = self._db.execute("SELECT username FROM users WHERE account_id = ?", (account_id,)).fetchone()
        return self.user(row["username"]) if row else None

    def set_account(self, username: str, account_id: str) -> None:
        self._db.execute("UPDATE users SET account_id = ? WHERE username = ?", (account_id, username))

    def set_enrolled(self, username: str, step: int) -> None:
        self._db.execute(
            "UPDATE users SET totp_enrolled = 1, totp_last_step = ? WHERE username = ?", (step, username)
        )

    def use_totp_step(self, username: str, step: int) -> bool:
        """Record a used TOTP time step; False when it (or a later one) was used already (no replay)."""
        cur = self._db.execute(
            "UPDATE users SET totp_last_step = ? WHERE username = ? AND totp_last_step < ?",
            (step, username, step),
        )
        return cur.rowcount == 1

    def record_failure(self, username: str) -> int:
        """One more failed password or code; locks the user after LOCKOUT_THRESHOLD. Returns the count."""
        now = time.time()
        self._db.execute(
            "UPDATE users SET failed_attempts = failed_attempts + 1 WHERE username = ?", (username,)
        )
        user = self.user(username)
        if user is None:
            return 0
        if user.failed_attempts >= LOCKOUT_THRESHOLD:
            self._db.execute(
                "UPDATE users SET locked_until = ?, failed_attempts = 0 WHERE username = ?",
                (now + LOCKOUT_SECONDS, username),
            )
        return user.failed_attempts

    def reset_failures(self, username: str) -> None:
        self._db.execute("UPDATE users SET failed_attempts = 0 WHERE username = ?", (username,))

    # saved bill accounts
    def save_bill_account(self, username: str, biller: str, account_number: str, nickname: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO saved_bills (username, biller, account_number, nickname)"
            " VALUES (?, ?, ?, ?)",
            (username, biller, account_number, nickname),
        )

    def bill_accounts(self, username: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, biller, account_number, nickname FROM saved_bills WHERE username = ? ORDER BY id",
            (username,),
        ).fetchall()
        return [dict(r) for r in rows]

    def delete_bill_account(self, username: str, saved_id: int) -> None:
        self._db.execute("DELETE FROM saved_bills WHERE username = ? AND id = ?", (username, saved_id))

    # card tokens (display data only; the card itself is in the hub's vault)
    def save_card(self, username: str, token: str, brand: str, last4: str, exp: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO cards (token, username, brand, last4, exp) VALUES (?, ?, ?, ?, ?)",
            (token, username, brand, last4, exp),
        )

    def cards(self, username: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT token, brand, last4, exp FROM cards WHERE username = ? ORDER BY rowid", (username,)
        ).fetchall()
        return [dict(r) for r in rows]

    def card(self, username: str, token: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT token, brand, last4, exp FROM cards WHERE username = ? AND token = ?", (username, token)
        ).fetchone()
        return dict(row) if row else None

    # notifications
    def add_notification(
        self, *, event_id: str, username: str, type_: str, summary: str, object_id: str | None, created: str
    ) -> bool:
        """Store an event for a user; False when it was stored already (the hub may deliver twice)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO notifications"
            " (event_id, username, type, summary, object_id, created, received) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event_id, username, type_, summary, object_id, created, time.time()),
        )
        return cur.rowcount == 1

    def notifications(self, username: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT event_id, type, summary, object_id, created FROM notifications WHERE username = ?"
            " ORDER BY received DESC LIMIT ?",
            (username, limit),
        ).fetchall()
        return [dict(r) for r in rows]
