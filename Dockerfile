# syntax=docker/dockerfile:1
# One image, both commands: buildkit-sidecar (in every builder pod) and
# buildkit-autoscaler. The manifests (deploy/) pick the command.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/buildkit-fleet:0.1.0 --push .
#
# Every dependency ships wheels for both arches (grpcio, protobuf, aiohttp,
# pydantic-core), so nothing compiles, natively or under emulation.
# The Python version is pyproject.toml's (requires-python, mypy's python_version).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY sidecar ./sidecar
COPY autoscaler ./autoscaler
COPY common ./common
# A regular (not editable) install: the packages land in the venv, compiled to
# bytecode now, because the root filesystem is read-only at run time.
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/buildkit-sidecar --version \
 && /opt/venv/bin/buildkit-autoscaler --version

FROM python:${PYTHON_VERSION}-slim-bookworm
# pyproject.toml's version and licence (tests/deploy/test_image.py keeps them equal);
# `buildkit-sidecar --version` in the image prints the same version.
LABEL org.opencontainers.image.title="buildkit-fleet" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root (the manifests also say runAsNonRoot, 65532:65532); nothing writes
# to the filesystem, so readOnlyRootFilesystem works as is.
USER 65532:65532
# The sidecar by default; the autoscaler's Deployment sets command: [buildkit-autoscaler].
ENTRYPOINT ["buildkit-sidecar"]
CMD ["run"]
