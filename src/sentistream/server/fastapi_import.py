"""Import FastAPI without building its OpenAPI schema models up front.

``import fastapi`` defines some thirty pydantic models of the OpenAPI document
(``fastapi.openapi.models``: ``Schema``, ``Operation``, ``PathItem``, ``OpenAPI``, ...) and
pydantic builds each one's validator and serializer as the class is created: 50-55 ms of the
server's start on the 2-core Zen 4 EPYC, on the main thread, while the model loads on another
(the GIL makes that time add to the cold start). The server only needs those models when a
client asks for ``/openapi.json`` or ``/docs``. :func:`import_fastapi` imports FastAPI with
pydantic's ``defer_build`` switched on for the classes created during that import only, so
they are built on first use instead (about 5 ms, once, the first time the OpenAPI document is
served). ``pydantic.BaseModel.model_config`` is restored before it returns, so every other
model (ours included) builds as usual.

Measured: one-model HTTP-only server, process start to first answer, 12 paired cold starts:
1.08x sooner (0.554 -> 0.506 s median on a busy hour of the VM, faster in 11 of 12;
docs/performance.md, tuning log round eight).
"""

from __future__ import annotations

import sys
import threading

__all__ = ["import_fastapi"]

_lock = threading.Lock()


def import_fastapi() -> None:
    """Import ``fastapi`` (and its router) with its OpenAPI models' build deferred; a no-op
    when FastAPI is already imported."""
    if "fastapi" in sys.modules:
        return
    import pydantic

    with _lock:
        config = pydantic.BaseModel.model_config
        defer = (
            "fastapi" not in sys.modules
            and isinstance(config, dict)
            and "defer_build" not in config  # a caller's own global choice stays as it is
        )
        if defer:
            config["defer_build"] = True
        try:
            import fastapi.routing  # noqa: F401  (fastapi itself first)
        finally:
            if defer:
                del config["defer_build"]
