"""The most images one request or model run may hold, whatever ``MAX_BATCH_SIZE`` says (it is at most this):
one constant for the services' settings and for the CLI that loads them (``splitinfer bench --per-request``).
Nothing is imported here, so the CLI's argument checks stay instant."""

__all__ = ["MAX_BATCH_SIZE_LIMIT"]

MAX_BATCH_SIZE_LIMIT = 1024
"""The largest ``MAX_BATCH_SIZE`` a service accepts."""
