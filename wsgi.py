"""WSGI entry point: ``gunicorn wsgi:app``."""

from crew7 import create_app

app = create_app()
