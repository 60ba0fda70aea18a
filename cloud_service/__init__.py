"""The cloud service: runs the tail of any cut of its model for the edges that call it."""

from cloud_service.app import create_app
from cloud_service.settings import CloudSettings

__all__ = ["CloudSettings", "create_app"]
