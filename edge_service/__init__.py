"""The edge service: decodes images, runs the head of a split model and calls the cloud for the rest."""

from edge_service.app import create_app
from edge_service.settings import EdgeSettings

__all__ = ["EdgeSettings", "create_app"]
