"""The HTTP transport: a FastAPI gateway over the serving core."""
