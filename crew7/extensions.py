"""Extension objects, created without an app and bound in ``create_app``."""

from flask_caching import Cache
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from crew7.schemas.metadata import ErrorSchema


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
cache = Cache()


class CrewApi(Api):
    """flask-smorest's Api, documenting crew7's one error shape."""

    ERROR_SCHEMA = ErrorSchema


api = CrewApi()
