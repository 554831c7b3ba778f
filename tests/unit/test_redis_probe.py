"""Where a Redis URL points, and the one-line messages of Redis failures."""

from __future__ import annotations

import socket

import pytest
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sentistream.stream.redis_probe import describe, redis_address


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:s3cret@127.0.0.1:6390/0", "127.0.0.1:6390"),
        ("rediss://user:pw@redis.example:6380/1?ssl_ca_certs=/x/ca.pem", "redis.example:6380"),
        ("redis://localhost", "localhost:6379"),
        ("redis://:pw@[::1]:7000", "[::1]:7000"),
        ("unix:///run/redis.sock?password=pw", "/run/redis.sock"),
    ],
)
def test_redis_address_names_host_and_port_only(url: str, where: str) -> None:
    assert redis_address(url) == where


def test_redis_errors_are_one_line_without_the_password() -> None:
    url = "redis://admin:hunter2@10.0.0.5:6390/0"
    refused = RedisConnectionError("Error 111 connecting to 10.0.0.5:6390. Connect call failed.")
    refused.__context__ = ConnectionRefusedError(111, "Connect call failed")
    unknown = RedisConnectionError("Error -2 connecting to nowhere:6390.")
    unknown.__context__ = socket.gaierror(-2, "Name or service not known")
    cases = {
        refused: "cannot reach Redis at 10.0.0.5:6390: connection refused",
        unknown: "cannot reach Redis at 10.0.0.5:6390: unknown host (Name or service not known)",
        RedisTimeoutError("Timeout connecting to server"): (
            "cannot reach Redis at 10.0.0.5:6390: no answer (timed out)"
        ),
        AuthenticationError("invalid username-password pair or user is disabled."): (
            "Redis at 10.0.0.5:6390 refused the login: invalid username-password pair or user "
            "is disabled"
        ),
        AuthenticationError("Authentication required."): (
            "Redis at 10.0.0.5:6390 needs a password (put it in the Redis URL)"
        ),
        ResponseError("ERR hunter2 is\nnot allowed"): (
            "Redis at 10.0.0.5:6390 answered an error: ERR *** is not allowed"
        ),
    }
    for exc, message in cases.items():
        assert describe(exc, url) == message
