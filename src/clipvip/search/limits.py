"""The limits of ``clipvip serve`` (no web-stack import, so ``clipvip --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # the Host names a loopback server answers to by default


@dataclass(frozen=True)
class Limits:
    """Everything the server refuses, and when it gives up on a client. Defaults suit one user's machine."""

    allow_hosts: tuple[str, ...] = LOOPBACK_NAMES  # Host header names accepted ("*" accepts any)
    keep_alive: float = 5.0  # s an idle keep-alive connection is kept after a response
    request_timeout: float = 10.0  # s a client has to send a complete request head
    send_timeout: float = 60.0  # s a response may wait for a client that stopped reading
    max_connections: int = 256  # open connections; more get 503
    max_concurrency: int = 64  # requests being answered at once; more get 503
    max_url: int = 8192  # bytes of path + query; more → 414
    max_head: int = 16384  # bytes of request line + headers; more → 414 (line) or 431 (headers)
    refresh_interval: float = 1.0  # s between checks for a newer commit of the index

    def __post_init__(self) -> None:
        for name in ("keep_alive", "request_timeout", "send_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name} must be in (0, 3600] seconds, got {getattr(self, name)}")
        for name in ("max_connections", "max_concurrency"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise ValueError(f"{name} must be in 1..100000, got {getattr(self, name)}")
        if not 1024 <= self.max_url < self.max_head:
            raise ValueError(f"max_url must be in 1024..max_head-1, got {self.max_url}")


DEFAULTS = Limits()
