"""A small JSON client for the Kubernetes API: kubeconfig auth, plain dicts, list and watch.

The node agent and the cluster helpers need a handful of calls (get, create, patch, delete,
watch) on plain JSON; this keeps them typed and independent of a generated client.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

JSON = dict[str, Any]

PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}


UNREACHABLE = (httpx.TransportError, OSError)
"""What a request raises when the API server cannot be reached (down, restarting)."""


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.body = body
        try:
            message = str(json.loads(body).get("message", body))
        except (ValueError, AttributeError):
            message = body
        self.message = message
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


@dataclass(frozen=True)
class Credentials:
    """What a kubeconfig's current context says about reaching and authenticating to a server."""

    server: str
    ca_pem: bytes | None
    insecure: bool
    cert_pem: bytes | None
    key_pem: bytes | None
    token: str | None

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Credentials:
        config = yaml.safe_load(path.read_text())
        base = path.parent
        context_name = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        if not contexts:
            raise ValueError(f"{path}: no contexts")
        context = (
            contexts[context_name] if context_name in contexts else next(iter(contexts.values()))
        )
        cluster = {c["name"]: c["cluster"] for c in config.get("clusters", [])}[context["cluster"]]
        users = {u["name"]: u.get("user") or {} for u in config.get("users", [])}
        user = users.get(context.get("user", ""), {})
        token = user.get("token")
        if token is None and user.get("tokenFile"):
            token = _resolve(base, user["tokenFile"]).read_text().strip()
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            ca_pem=_data_or_file(base, cluster, "certificate-authority"),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            cert_pem=_data_or_file(base, user, "client-certificate"),
            key_pem=_data_or_file(base, user, "client-key"),
            token=token,
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_pem is not None:
            context = ssl.create_default_context(cadata=self.ca_pem.decode())
        else:
            context = ssl.create_default_context()
        if self.cert_pem is not None and self.key_pem is not None:
            # load_cert_chain reads files only; these live just long enough to be read.
            with tempfile.TemporaryDirectory(prefix="bp-kubeapi-") as tmp:
                cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
                cert.write_bytes(self.cert_pem)
                key.touch(mode=0o600)
                key.write_bytes(self.key_pem)
                context.load_cert_chain(cert, key)
        return context


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _data_or_file(base: Path, section: Mapping[str, Any], key: str) -> bytes | None:
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"])
    if section.get(key):
        return _resolve(base, str(section[key])).read_bytes()
    return None


class KubeAPI:
    """JSON over HTTP to one API server. Thread-safe (one httpx client with a pool)."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        headers = {"Accept": "application/json", "User-Agent": "batchpilot-localcluster"}
        if credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        self._client = httpx.Client(
            base_url=credentials.server,
            verify=credentials.ssl_context(),
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    @classmethod
    def from_kubeconfig(cls, path: Path, *, timeout: float = 30.0) -> KubeAPI:
        return cls(Credentials.from_kubeconfig(path), timeout=timeout)

    @property
    def server(self) -> str:
        return self.credentials.server

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> JSON:
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if content is not None else {}
        response = self._client.request(
            method,
            path,
            params=dict(params) if params else None,
            content=content,
            headers=headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        if response.status_code >= 400:
            raise ApiError(response.status_code, method, path, response.text)
        if not response.content:
            return {}
        result: JSON = response.json()
        return result

    def get(self, path: str, params: Mapping[str, str | int] | None = None) -> JSON:
        return self.request("GET", path, params=params)

    def get_or_none(self, path: str) -> JSON | None:
        try:
            return self.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Any, *, patch_type: str = "strategic") -> JSON:
        return self.request("PATCH", path, body=body, content_type=PATCH_TYPES[patch_type])

    def replace(self, path: str, body: JSON) -> JSON:
        return self.request("PUT", path, body=body)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body=body)

    def healthy(self) -> bool:
        """True when /readyz answers ok within a few seconds."""
        try:
            response = self._client.get("/readyz", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text.strip() == "ok"

    def watch(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, JSON]]:
        """Stream (type, object) watch events until the server ends the watch.

        ERROR events raise ApiError (status 410 means: relist, the resourceVersion is gone).
        """
        query: dict[str, str | int] = dict(params or {})
        query.update({"watch": "true", "timeoutSeconds": timeout_seconds})
        query.setdefault("allowWatchBookmarks", "true")
        timeout = httpx.Timeout(10.0, read=timeout_seconds + 30.0)
        with self._client.stream("GET", path, params=query, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, "WATCH", path, response.text)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = str(event.get("type", "")), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiError(int(obj.get("code", 500)), "WATCH", path, json.dumps(obj))
                yield kind, obj
