"""What handlers and services share: the public API schemas (msgspec Structs) and row → object rendering."""
