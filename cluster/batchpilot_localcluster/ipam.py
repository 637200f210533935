"""Pod IPs on the loopback network: one 127.0.0.x address per pod, reused after deletion."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Sequence


class AddressesExhaustedError(RuntimeError):
    """Every address of the pod range is in use."""


class IPAllocator:
    """Hand out addresses of `cidr` (a loopback range), lowest free first.

    127.0.0.1 (the control plane), the network and the broadcast address are never handed out,
    nor anything in `reserved`. Allocation is idempotent per key (a pod UID).
    """

    def __init__(self, cidr: str = "127.0.0.0/24", reserved: Iterable[str] = ()) -> None:
        network = ipaddress.ip_network(cidr)
        if not network.is_loopback:
            raise ValueError(f"pod range {cidr} is not a loopback range (127.0.0.0/8)")
        skip = {ipaddress.ip_address("127.0.0.1"), *map(ipaddress.ip_address, reserved)}
        self._pool = [str(ip) for ip in network.hosts() if ip not in skip]
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()

    def allocate(self, key: str, usable: Callable[[str], bool] | None = None) -> str:
        """The key's address; a new one must also pass `usable` (e.g. its ports are free)."""
        with self._lock:
            if key in self._by_key:
                return self._by_key[key]
            used = set(self._by_key.values())
            for ip in self._pool:
                if ip not in used and (usable is None or usable(ip)):
                    self._by_key[key] = ip
                    return ip
            raise AddressesExhaustedError(f"no free pod address left in {len(self._pool)}")

    def release(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._by_key.get(key)

    def in_use(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_key)


def ports_free(ip: str, ports: Sequence[int]) -> bool:
    """True when every TCP port can be bound on `ip` (nobody else, e.g. another local
    cluster's pod, already listens there)."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
            except OSError:
                return False
    return True
