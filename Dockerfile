# syntax=docker/dockerfile:1
# The triage image: the runtime + the serving and dicomweb extras (+ the gpu extra in the GPU variant), for
# `triage watch`, `triage listen` and `triage poll` (every other runtime command works too). docs/deploy.md explains
# building and running it.
#
#   GPU (default): docker build -t triage:gpu .
#   CPU:           docker build --build-arg VARIANT=cpu -t triage:cpu .
#
# Versions: every Python package gets the exact version constraints.txt pins (pip -c), the GPU variant's
# also those of constraints-gpu.txt. The GPU variant replaces onnxruntime by onnxruntime-gpu[cuda,cudnn]
# at the same version (tools/image_requirements.py): onnxruntime-gpu 1.31 is built for CUDA 13 and
# cuDNN 9, and its `cuda`/`cudnn` extras (+ nvidia-cublas) bring exactly those libraries as wheels, so
# both variants start from plain Ubuntu and the GPU one needs only the host's NVIDIA driver (>= 580, the
# CUDA 13 driver; the NVIDIA container toolkit mounts it with `docker run --gpus all`). TensorRT does not
# install from PyPI (docs/export.md): --build-arg TENSORRT=<requirement> adds one your own package index
# serves, pinned to the bundle's engines. Python is 3.11, the version the locks are made for.

ARG VARIANT=gpu
ARG CUDA_BASE=ubuntu:22.04
ARG CPU_BASE=ubuntu:22.04

FROM ${CUDA_BASE} AS base-gpu
FROM ${CPU_BASE} AS base-cpu

FROM base-${VARIANT}
ARG VARIANT
ARG TENSORRT=""
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/triage
ENV PATH=/opt/triage/bin:$PATH

WORKDIR /src
# Dependencies first (a layer that survives code changes), from pyproject.toml with the lock.
COPY pyproject.toml constraints.txt constraints-gpu.txt README.md ./
COPY tools/image_requirements.py tools/
RUN python tools/image_requirements.py --variant "${VARIANT}" --extras serving,dicomweb --tensorrt "${TENSORRT}" \
        > /tmp/requirements.txt \
 && pip install -c constraints.txt -c constraints-gpu.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY triage triage
COPY serving serving
RUN pip install --no-deps . && rm -rf /src/build && triage version

# A non-root user; the data volume holds the watched folder, the output folders and the bundles.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/triage --shell /usr/sbin/nologin triage \
 && mkdir -p /data && chown triage:triage /data
USER triage
WORKDIR /data
VOLUME ["/data"]

# /metrics and /healthz inside the container (publish it on the host's loopback: -p 127.0.0.1:9120:9120);
# 11112 is the DICOM listener's default port.
ENV TRIAGE_HTTP_HOST=0.0.0.0 \
    TRIAGE_HTTP_PORT=9120
EXPOSE 9120 11112
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TRIAGE_HTTP_PORT', '9120') + '/healthz', timeout=4)"]

ENTRYPOINT ["triage"]
CMD ["--help"]
