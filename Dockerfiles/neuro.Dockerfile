# neuro: feature extraction, PLS/RSA scoring. CPU (scoring is regression-bound).
# Built by `make images` as ghcr.io/beyond-flatland/neuro:<version> (Dockerfiles/README.md).

# ---- build: a virtual environment with the pinned CPU torch wheels and the project ----
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch is pinned exactly in pyproject.toml; the CPU index has the same versions without ~3 GB of CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml ./
COPY flatland/ flatland/
COPY services/ services/
RUN pip install . && rm -rf /src

# ---- runtime: the venv on a slim Python, nothing else from the build ----
FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 flatland \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin flatland
COPY --from=build /opt/venv /opt/venv
# The root filesystem is read-only in the cluster: every cache and HOME go to the /tmp emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9090
ENTRYPOINT ["flatland"]
CMD ["serve", "neuro", "--port", "50051", "--metrics-port", "9090"]
