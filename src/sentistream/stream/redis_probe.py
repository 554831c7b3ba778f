"""Where a Redis URL points, and one-line errors when Redis cannot be used.

Every command that needs Redis (``stream``, ``ingest``, ``subscribe``, ``demo`` with a Redis
URL) calls :func:`probe` before anything else and runs inside :func:`redis_errors`: a Redis
that is down, does not answer, or refuses the login ends the command with one line naming
``host:port`` and exit code 2 (:class:`~sentistream.errors.UnreachableError`), never a
traceback, never the password or the URL.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from sentistream.errors import UnreachableError

__all__ = ["describe", "probe", "redis_address", "redis_errors"]

PROBE_TIMEOUT_S = 5.0


def redis_address(url: str) -> str:
    """``host:port`` of a ``redis://``/``rediss://`` URL (the socket path of ``unix://``),
    without user, password, database or query."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "?"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        return f"{host}:?"
    return f"{host}:{port}"


def _scrub(text: str, url: str) -> str:
    """``text`` without the URL's password or user name, on one line."""
    parts = urlsplit(url)
    for secret in (parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***").replace(unquote(secret), "***")
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    """Why a connection failed, from the OS error under redis-py's message when there is one."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, socket.gaierror) and cause.strerror:
        return f"unknown host ({cause.strerror})"
    if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno).lower()
    return str(exc).rstrip(".")


def describe(exc: BaseException, url: str) -> str:
    """The one-line message for ``exc``, naming where Redis was expected."""
    where = redis_address(url)
    if isinstance(exc, AuthenticationError):
        text = str(exc)
        if "HELLO must be called" in text or "Authentication required" in text:
            return f"Redis at {where} needs a password (put it in the Redis URL)"
        return f"Redis at {where} refused the login: {_scrub(text, url).rstrip('.')}"
    if isinstance(exc, RedisTimeoutError):
        return f"cannot reach Redis at {where}: no answer (timed out)"
    if isinstance(exc, RedisConnectionError | OSError):
        return f"cannot reach Redis at {where}: {_scrub(_reason(exc), url)}"
    return f"Redis at {where} answered an error: {_scrub(str(exc), url).rstrip('.')}"


async def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One PING on a fresh connection, no retries; raises UnreachableError with one line."""
    client = aioredis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise UnreachableError(describe(exc, url)) from None
    finally:
        with suppress(RedisError, OSError):
            await client.aclose()


@asynccontextmanager
async def redis_errors(url: str) -> AsyncIterator[None]:
    """Turn a Redis connection failure that escapes the command into UnreachableError."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise UnreachableError(describe(exc, url)) from None
