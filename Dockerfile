# One image for both services (CPU torch). The install steps mirror the Makefile's:
# the matching torch/torchvision pair first, then the project.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
RUN python -m pip install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple \
        torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY edge_service ./edge_service
COPY cloud_service ./cloud_service
COPY splitinfer ./splitinfer
RUN python -m pip install .

RUN useradd --create-home splitinfer
USER splitinfer
EXPOSE 8000 8001
CMD ["splitinfer", "--help"]
