"""Model-based conservation checker: a hypothesis state machine drives the real API of real
``payhub serve`` / ``payhub sandbox`` processes (with kill -9 of the gateway), then compares the hub's
ledger with the processors' and billers' own books (DESIGN §7)."""
