"""Request bodies: present, JSON and parseable.

Looked at only once the caller may write (see ``crew7.auth.write_access``); the schemas
validate them after that.
"""

from flask import request
from flask_smorest import abort
from webargs.flaskparser import FlaskParser


def require_json_body():
    """Writes take a JSON body: absent is a 400, another media type a 415."""
    if not request.get_data(cache=True):
        abort(400, message="a JSON request body is required")
    if not request.is_json:
        abort(415, message="the request body must be application/json")


class JSONBodyParser(FlaskParser):
    """webargs' parser, for which a body nested too deeply for the JSON decoder is
    malformed like any other (400), not a RecursionError."""

    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            abort(400, message="malformed JSON body: nested too deeply")
