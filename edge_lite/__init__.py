"""A torch-free edge: the head (an ONNX export) on ONNX Runtime, preprocessing with Pillow and numpy, the
wire format with numpy, serving ``/v1/classify`` like :mod:`edge_service` does. Nothing here imports torch."""

__all__: list[str] = []
