"""payhub package."""

VERSION = "0.1.0"
