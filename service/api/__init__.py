"""HTTP layer: request/response schemas (the public contract) and routes."""
