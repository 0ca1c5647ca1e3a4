"""Domain errors; the error handlers map them to HTTP statuses."""


class ServiceError(Exception):
    status = 400


class NotFound(ServiceError):
    status = 404


class Forbidden(ServiceError):
    status = 403
