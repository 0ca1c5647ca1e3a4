"""Extension objects, created without an app and bound in ``create_app``."""

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


class IdConverter(BaseConverter):
    """A database id in a path. Any run of digits routes; one out of range becomes 0, which
    no row has, so the view answers 404. (Rejecting it here would let werkzeug answer 405
    when another method's rule matches the same path.)"""

    regex = r"\d{1,40}"
    part_isolating = True

    def to_python(self, value):
        number = int(value)
        return number if 1 <= number <= MAX_ID else 0

    def to_url(self, value):
        return str(int(value))


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
cache = Cache()


class CrewApi(Api):
    """flask-smorest's Api, documenting crew7's one error shape."""

    ERROR_SCHEMA = ErrorSchema


api = CrewApi()
