"""Domain services: orchestration between the API, the store and the connectors."""
