"""payhub Bill Pay: the reference end-user web app (backend-for-frontend over payhub_client)."""

__version__ = "0.1.0"
