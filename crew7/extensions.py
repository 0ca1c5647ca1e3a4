"""Extension objects, created without an app and bound in ``create_app``."""

import re

from flask_caching import Cache
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from werkzeug.routing import BaseConverter

from crew7.schemas.metadata import ErrorSchema


class Base(DeclarativeBase):
    pass


# Ids are the database's 32-bit serials.
MAX_ID = 2**31 - 1

# One spelling per id, in ASCII: no sign, no leading zero, no other script's digits (Python's
# int() and the regex \d accept those, which would make aliases of every id).
ID_PATTERN = "[1-9][0-9]{0,39}"
# A token id in a metadata URL: decimal, or the 64 lowercase hex digits that ERC-1155 clients
# substitute for {id}. Only the ids a crew or agent can have name a document.
TOKEN_ID_PATTERN = "[1-9][0-9]{0,18}|[0-9a-f]{64}"
TOKEN_ID_RE = re.compile(TOKEN_ID_PATTERN)


class IdConverter(BaseConverter):
    """A database id in a path, spelt canonically. Any such run of digits routes; one out of
    range becomes 0, which no row has, so the view answers 404. (Rejecting it here would let
    werkzeug answer 405 when another method's rule matches the same path.) Another spelling
    routes nowhere: 404."""

    regex = ID_PATTERN
    part_isolating = True

    def to_python(self, value):
        number = int(value)
        return number if number <= MAX_ID else 0

    def to_url(self, value):
        return str(int(value))


class TokenIdConverter(BaseConverter):
    """A metadata token id. It routes like ``string`` and the view decides, so that every
    malformed id gets the metadata 404; the converter documents the accepted spellings."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
cache = Cache()


class CrewApi(Api):
    """flask-smorest's Api, documenting crew7's one error shape."""

    ERROR_SCHEMA = ErrorSchema
