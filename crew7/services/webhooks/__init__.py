"""Signed webhooks that deliver the change feed (``crew7.services.feed``) to subscribers:
``subscriptions`` (what operators manage), ``delivery`` (the at-least-once, in-order
loop), ``signing``, ``addresses`` (which receivers are allowed) and ``transport``."""
