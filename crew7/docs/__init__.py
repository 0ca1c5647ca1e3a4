"""The API docs page: Swagger UI over /openapi.json, from assets the app serves itself."""
