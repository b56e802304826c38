"""The Redis that carries dreamgen's distributed jobs: its URL, a client that fails fast, and the key namespace.

The same Redis is Celery's broker and result backend and holds the job records (`records.py`). A client here
never waits long: a down broker must give the user a one-line error in seconds, not a hang.
"""
from __future__ import annotations

import functools
from urllib.parse import urlsplit, urlunsplit

from .. import settings
from ..errors import BrokerUnavailable

CONNECT_TIMEOUT_S = 3.0
COMMAND_TIMEOUT_S = 30.0  # covers a pipeline of a few thousand commands on a busy server
# A worker's client rides out a Redis restart: each command is retried on a lost connection, with backoff
# (0.05 s doubling to 2 s), about RESTART_WAIT_S in all. A command-line client answers in a second instead.
RESTART_RETRIES, RESTART_WAIT_S = 20, 30


def broker_url(url: str | None = None) -> str:
    """The URL given, else $DREAMGEN_BROKER_URL, else the local default."""
    return settings.broker_url(url)


def key_prefix() -> str:
    """Namespace of every key dreamgen writes ($DREAMGEN_REDIS_PREFIX): lets tests and several deployments
    share one Redis database without meeting."""
    return settings.redis_prefix()


def redact(url: str) -> str:
    """The URL with its password replaced by ***, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(url: str | None = None, check: bool = True, patient: bool | None = None):
    """A redis client for `url` (redis://, rediss://, with or without a password) with short timeouts.
    With `check`, ping it now and raise BrokerUnavailable naming the URL if it does not answer. A `patient`
    client (the default without `check`: the workers') retries commands through a restart of Redis."""
    client = _client(broker_url(url), not check if patient is None else patient)
    if check:
        ping(client, broker_url(url))
    return client


def ping(client, url: str) -> None:
    import redis

    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BrokerUnavailable(f"cannot reach the broker at {redact(url)}: {_reason(e)}") from None
    except redis.AuthenticationError as e:
        raise BrokerUnavailable(f"the broker at {redact(url)} refused the credentials: {e}") from None
    except redis.ResponseError as e:
        raise BrokerUnavailable(f"the broker at {redact(url)} answered with an error: {_reason(e)}") from None
    except redis.RedisError as e:  # e.g. something else listens there
        raise BrokerUnavailable(f"no Redis answers at {redact(url)}: {_reason(e)}") from None


def unavailable(url: str, error: BaseException) -> BrokerUnavailable:
    """The one-line error for a connection failure met after the first ping."""
    return BrokerUnavailable(f"lost the broker at {redact(url)}: {_reason(error)}")


@functools.lru_cache(maxsize=8)  # one pool per URL, patience and process; redis-py resets pools after a fork
def _client(url: str, patient: bool = False):
    import redis
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.retry import Retry

    retry = Retry(ExponentialBackoff(cap=2, base=0.05), RESTART_RETRIES) if patient else Retry(NoBackoff(), 1)
    # Celery's own query options (e.g. ssl_cert_reqs=required) are understood by redis-py too.
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
                                retry=retry, health_check_interval=30, decode_responses=True)


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
