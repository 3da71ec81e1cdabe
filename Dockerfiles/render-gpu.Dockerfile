# render (GPU): pyrender through EGL on the NVIDIA driver (apt-packages.txt: libegl1, libgl1).
# The NVIDIA container toolkit mounts the driver's EGL library when NVIDIA_DRIVER_CAPABILITIES has 'graphics'.
# Build from the repository root: docker build -f Dockerfiles/render-gpu.Dockerfile -t beyond-flatland/render-gpu:0.1.0 .

# ---- build: Python 3.11 (the project's version; Ubuntu 22.04 ships 3.10) from uv's standalone
# builds, which need only glibc 2.17, then a venv with the pinned CUDA torch wheels and the project ----
FROM ghcr.io/astral-sh/uv:0.6.14 AS uv
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_PREFERENCE=only-managed
RUN uv python install 3.11.11 && uv venv --python 3.11.11 /opt/venv
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# torch is pinned exactly in pyproject.toml; the default index's wheels are the CUDA builds.
RUN uv pip install torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml ./
COPY flatland/ flatland/
COPY services/ services/
RUN uv pip install . && rm -rf /src

# ---- runtime: CUDA runtime + cuDNN base, the standalone Python and the venv ----
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
RUN apt-get update \
 && apt-get install -y --no-install-recommends libegl1 libgl1 \
 && rm -rf /var/lib/apt/lists/*
# glvnd finds the driver's EGL through this vendor file (the toolkit mounts libEGL_nvidia.so.0).
RUN mkdir -p /usr/share/glvnd/egl_vendor.d \
 && printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}\n' \
    > /usr/share/glvnd/egl_vendor.d/10_nvidia.json
RUN groupadd --gid 10001 flatland \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin flatland
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    PYOPENGL_PLATFORM=egl
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9090
ENTRYPOINT ["flatland"]
CMD ["serve", "render", "--port", "50051", "--metrics-port", "9090"]
