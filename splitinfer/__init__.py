"""The ``splitinfer`` command line: inspect cuts and codecs, run the services, classify, benchmark."""

__all__: list[str] = []
