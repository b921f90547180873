"""The web workers' shared cache lives on the broker's Redis, in another database than Celery's queues."""

from __future__ import annotations

import pytest

from stack.broker import cache_url


@pytest.mark.parametrize(
    ("broker", "cache"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/1"),
        ("redis://:secret@redis:6379/1", "redis://:secret@redis:6379/2"),
        ("rediss://redis.example.org:6380/0", "rediss://redis.example.org:6380/1"),
        ("redis+socket:///var/x/redis.socket", "unix:///var/x/redis.socket?db=1"),
    ],
)
def test_the_cache_is_another_database_on_the_brokers_server(broker, cache):
    assert cache_url(broker) == cache


def test_a_broker_that_is_not_redis_asks_for_an_explicit_cache_url():
    with pytest.raises(ValueError, match="CACHE_REDIS_URL"):
        cache_url("amqp://guest@localhost//")
