"""Extension objects, created without an app and bound in ``create_app``."""

from flask_caching import Cache
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from werkzeug.routing import IntegerConverter

from crew7.schemas.metadata import ErrorSchema


class Base(DeclarativeBase):
    pass


class IdConverter(IntegerConverter):
    """A database id: 1 to 2**63 - 1. Anything else does not route (404), rather than
    overflowing in the database driver."""

    def __init__(self, map, *args, **kwargs):
        super().__init__(map, min=1, max=2**63 - 1)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
cache = Cache()


class CrewApi(Api):
    """flask-smorest's Api, documenting crew7's one error shape."""

    ERROR_SCHEMA = ErrorSchema


api = CrewApi()
