"""Users and their API tokens."""

from crew7.auth import new_token
from crew7.extensions import db
from crew7.models import User, hash_token


def create_user(name, admin=False):
    """Create a user; returns ``(user, token)``. The token is shown once, stored hashed."""
    token = new_token()
    user = User(name=name, token_hash=hash_token(token), is_admin=admin)
    db.session.add(user)
    db.session.commit()
    return user, token
