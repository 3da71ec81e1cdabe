"""Choosing PyOpenGL's platform (OSMesa on the CPU, EGL on GPUs) once per process.

Everything that draws with OpenGL (the render stage's renderer, meshgen's quick family
sheets) calls :func:`select_platform` before importing pyrender, so it lives here on
the ground floor rather than in one stage that the other would have to import.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from services.common.errors import FlatlandError

PLATFORMS = ("osmesa", "egl")


class RenderBackendError(FlatlandError, RuntimeError):
    """The requested OpenGL platform cannot be used in this process."""

    grpc_status = "FAILED_PRECONDITION"  # this server cannot do what was asked; another might


def _load_triton_before_mesa() -> None:
    """Load triton's LLVM before Mesa's, so both can live in one process.

    Mesa's llvmpipe (OSMesa, and EGL's software fallback) and triton (which torch
    imports lazily, e.g. from ``torch.optim``) each bring their own LLVM. When Mesa's
    is loaded first, loading libtriton later crashes the process (seen here: a
    segfault in ``flatland run`` as training started after rendering); in the other
    order both work. Costs ~0.2 s once per process, and nothing where triton is absent.
    """
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def select_platform(backend: str = "auto") -> str:
    """Fix PyOpenGL's platform for this process and return it.

    Parameters
    ----------
    backend : {"auto", "osmesa", "egl"}
        ``auto`` keeps ``PYOPENGL_PLATFORM`` if it names a supported platform,
        else uses OSMesa (works everywhere, CPU only).

    Raises
    ------
    RenderBackendError
        If ``backend`` is unknown, or PyOpenGL was already imported with a
        different platform (it reads the variable once, at import).
    """
    if backend not in ("auto", *PLATFORMS):
        raise RenderBackendError(f"render backend must be one of auto, osmesa, egl; got {backend!r}")
    _load_triton_before_mesa()
    current = os.environ.get("PYOPENGL_PLATFORM")
    wanted = backend
    if backend == "auto":
        wanted = current if current in PLATFORMS else "osmesa"
    if "OpenGL.platform" in sys.modules:
        if current != wanted:
            raise RenderBackendError(
                f"render backend {wanted!r} requested, but PyOpenGL was already imported in this process "
                f"with PYOPENGL_PLATFORM={current!r}; set PYOPENGL_PLATFORM={wanted} before anything imports OpenGL "
                "(or use one backend per process)"
            )
        return wanted
    os.environ["PYOPENGL_PLATFORM"] = wanted
    return wanted
