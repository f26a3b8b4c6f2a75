"""payhub package."""
