"""Request bodies: present, JSON and parseable.

Looked at only once the caller may write (see ``crew7.auth.write_access``); the schemas
validate them after that.
"""

import json

from flask import request
from flask_smorest import abort
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import RequestEntityTooLarge


def require_json_body():
    """Writes take a JSON body: absent is a 400, another media type a 415, one longer than
    MAX_CONTENT_LENGTH a 413."""
    data = request.get_data(cache=True)
    if not data:
        abort(400, message="a JSON request body is required")
    if request.content_length is None and len(data) == request.max_content_length:
        # A chunked body is read up to the limit and no further (werkzeug returns it cut
        # short), so whether more follows is only known by asking the server for it.
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    if not request.is_json:
        abort(415, message="the request body must be application/json")


class JSONBodyParser(FlaskParser):
    """webargs' parser, for which a body the JSON decoder gives up on is malformed like
    any other (400): nested too deeply (RecursionError), or an integer with more digits
    than Python converts (ValueError)."""

    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except json.JSONDecodeError:
            raise  # webargs' own 400
        except RecursionError:
            abort(400, message="malformed JSON body: nested too deeply")
        except ValueError:
            abort(400, message="malformed JSON body: a number too long to read")
