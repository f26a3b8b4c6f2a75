"""Outbound messages (SMS, e-mail, push) through the message sink's HTTP API."""
