"""Pod IPs on the loopback network: one 127.0.0.x address per pod, reused after deletion."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable


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

    def allocate(self, key: str) -> str:
        with self._lock:
            if key in self._by_key:
                return self._by_key[key]
            used = set(self._by_key.values())
            for ip in self._pool:
                if ip not in used:
                    self._by_key[key] = ip
                    return ip
            raise AddressesExhaustedError(f"all {len(self._pool)} pod addresses are in use")

    def release(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._by_key.get(key)

    def in_use(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_key)
