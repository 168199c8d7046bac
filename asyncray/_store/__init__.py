"""Object store and value serialization."""
