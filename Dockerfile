# One image for both services: `docker run IMAGE cloud`, `docker run IMAGE edge --cloud-url ...`.
#
# Layers, slowest to change first: torch + torchvision (from TORCH_INDEX only), the pinned dependency layer
# (deploy/image/requirements.lock), then the project's code, so a code change rebuilds only the last two
# small layers (seconds) and never reinstalls a dependency.
#
# Build arguments:
#   BASE_IMAGE   a Python 3.11 image with pip and venv (default: the official slim image, pinned by digest)
#   TORCH_INDEX  the only index torch and torchvision come from (default: PyTorch's CPU wheels). Empty: pip's
#                configured index, whose Linux torch wheel is the CUDA build.
#   TORCH_CUDA   forbid (default): the build fails if the installed torch is a CUDA build (torch.version.cuda);
#                allow: a CUDA build is accepted with a warning (it is 4-5 GB larger); require: it must be one
#                (docker-compose.gpu.yml).
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA=forbid
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG UID=10001

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/splitinfer \
    TORCH_HOME=/home/splitinfer/.cache/torch \
    SPLITINFER_HOST=0.0.0.0

# A fixed numeric UID (Kubernetes' runAsNonRoot can verify it) and the weights cache it owns: a named volume
# mounted there starts as a copy of this directory, ownership included, so the service can write it.
RUN set -eu; \
    mkdir -p /home/splitinfer/.cache/torch; \
    if command -v useradd >/dev/null; then \
        useradd --uid "$UID" --user-group --home-dir /home/splitinfer --no-create-home --shell /usr/sbin/nologin splitinfer; \
    else \
        echo "splitinfer:x:$UID:$UID::/home/splitinfer:/usr/sbin/nologin" >>/etc/passwd; \
        echo "splitinfer:x:$UID:" >>/etc/group; \
    fi; \
    chown -R "$UID:$UID" /home/splitinfer; \
    python3 -m venv /opt/venv

# torch and torchvision from TORCH_INDEX alone: no fallback index, so an unreachable CPU index fails the
# build instead of silently pulling the CUDA build from another index.
RUN set -eu; \
    index=""; \
    if [ -n "$TORCH_INDEX" ]; then index="--index-url $TORCH_INDEX"; fi; \
    pip install --quiet $index "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"; \
    cuda=$(python -c 'import torch; print(torch.version.cuda or "")'); \
    size=$(du -sh /opt/venv | cut -f1); \
    case "$TORCH_CUDA:$cuda" in \
        forbid:) echo "torch $TORCH_VERSION: CPU build ($size installed)";; \
        forbid:*) echo "ERROR: TORCH_INDEX=${TORCH_INDEX:-<pip default>} gave torch's CUDA $cuda build ($size)." \
                  "The CPU image needs PyTorch's CPU index; if only the CUDA wheel is reachable, build with" \
                  "--build-arg TORCH_CUDA=allow (a much larger image)." >&2; exit 1;; \
        allow:) echo "torch $TORCH_VERSION: CPU build ($size installed)";; \
        allow:*) echo "WARNING: torch $TORCH_VERSION is the CUDA $cuda build ($size installed): TORCH_CUDA=allow." \
                   "With PyTorch's CPU index reachable, the default build is several GB smaller.";; \
        require:) echo "ERROR: TORCH_CUDA=require but torch from ${TORCH_INDEX:-<pip default>} is a CPU build" >&2; exit 1;; \
        require:*) echo "torch $TORCH_VERSION: CUDA $cuda build ($size installed)";; \
        *) echo "ERROR: TORCH_CUDA must be forbid, allow or require, not '$TORCH_CUDA'" >&2; exit 1;; \
    esac

# Every other dependency, pinned, from pip's configured index; --no-deps + `pip check`: nothing unpinned.
COPY deploy/image/requirements.lock /opt/requirements.lock
RUN pip install --quiet --no-deps -r /opt/requirements.lock && pip check

# The project itself (the dependencies are all there: no index, no build isolation).
COPY . /opt/splitinfer-src
RUN pip install --quiet --no-deps --no-build-isolation --no-index /opt/splitinfer-src \
    && rm -rf /opt/splitinfer-src/build && splitinfer --help >/dev/null

USER ${UID}:${UID}
WORKDIR /home/splitinfer
EXPOSE 8000 8001
ENTRYPOINT ["splitinfer"]
CMD ["--help"]
