"""The Domain API: request signing (pure functions) and the HTTP client that classifies every
answer into a result or an :class:`~worker.errors.ApiError`. Knows nothing of Redis or settings."""
