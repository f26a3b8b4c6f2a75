"""Schema-driven fuzzing of the HTTP API with schemathesis (see test_api_fuzz.py for how to run)."""
