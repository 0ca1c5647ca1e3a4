"""The domain layer: no request, no HTTP."""
