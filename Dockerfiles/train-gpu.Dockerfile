# train (GPU): torchvision models on CUDA. No OpenGL.
# Built by `make images` as ghcr.io/beyond-flatland/train-gpu:<version> (Dockerfiles/README.md).

# ---- build: a virtual environment with the pinned CUDA 13.0 torch wheels and the project ----
# No CUDA base image: the cu130 wheels carry their CUDA 13.0 runtime, cuBLAS, cuDNN 9 and NCCL as
# nvidia-* wheels; the NVIDIA container toolkit mounts the node's driver (>= 580, Dockerfiles/README.md).
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch is pinned exactly in pyproject.toml; cu130 = the CUDA build PyPI's default wheels are too.
RUN pip install --index-url https://download.pytorch.org/whl/cu130 torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml ./
COPY flatland/ flatland/
COPY services/ services/
RUN pip install . && rm -rf /src

# ---- runtime: the venv (with its CUDA libraries) on a slim Python, nothing else from the build ----
FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 flatland \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin flatland
COPY --from=build /opt/venv /opt/venv
# NVIDIA_REQUIRE_CUDA: the container toolkit refuses to start this image on a driver older than CUDA 13.0's (>= 580).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    NVIDIA_REQUIRE_CUDA=cuda>=13.0 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9090
ENTRYPOINT ["flatland"]
CMD ["serve", "train", "--port", "50051", "--metrics-port", "9090"]
