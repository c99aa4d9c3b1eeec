# tas: the API (`tas serve`) or a worker (`tas worker`), one image for both.
#
# CPU (default):
#   docker build -t tas .
# CUDA (any NVIDIA base works; the build installs Python 3 there if the base has none):
#   docker build -t tas:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
#   docker run --gpus all tas:cuda tas worker --queues gpu --pool solo
# TORCH_INDEX is where torch/torchvision wheels come from: .../whl/cpu keeps the CPU image small
# (no CUDA libraries); .../whl/cuXXX must match the CUDA version of BASE_IMAGE.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG DEBIAN_FRONTEND=noninteractive

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# python:*-slim has Python 3.11; CUDA bases (Ubuntu) get the distribution's python3 (>= 3.11 on 24.04).
RUN if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# torch first, from the chosen index, in its own layer: it is most of the image and rarely changes.
RUN pip install --index-url "${TORCH_INDEX}" torch torchvision

COPY . /src
RUN pip install /src && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /home/tas --shell /usr/sbin/nologin tas \
    && mkdir -p /data \
    && chown tas:tas /data
WORKDIR /home/tas
USER tas

ENV TAS_DATA_DIR=/data
VOLUME /data
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TAS_PORT', '8000') + '/healthz', timeout=4)"

CMD ["tas", "serve", "--host", "0.0.0.0"]
