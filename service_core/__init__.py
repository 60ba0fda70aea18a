"""What both services are built from: the app skeleton, problem rendering, metrics, body limits, settings.

The library (``shared``) never imports this package; the services (``edge_service``, ``cloud_service``) do.
"""

__all__: list[str] = []
