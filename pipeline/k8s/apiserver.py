"""The Kubernetes API as the watcher uses it: raw JSON requests and watch streams, and its errors.

kubernetes_asyncio only configures the session (service account or kubeconfig: credentials, CA,
client certificates); the requests are ours, so list/watch semantics stay in our hands.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson


class ApiError(Exception):
    """An HTTP error or ERROR event from the apiserver, with its Status code and reason."""

    def __init__(self, code: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"HTTP {code} {reason}: {message}".strip())
        self.code, self.reason = code, reason

    @classmethod
    def from_status(cls, code: int, body: object) -> ApiError:
        doc = body if isinstance(body, dict) else {}
        return cls(doc.get("code") or code, str(doc.get("reason", "")), str(doc.get("message", ""))[:500])


class StreamBroken(Exception):
    """The watch stream ended mid-event or carried something that is not a watch event."""


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    namespaced: bool
    group: str = ""  # API group/version; "" for the core group (/api/v1)

    def path(self, namespace: str | None) -> str:
        root = f"/apis/{self.group}" if self.group else "/api/v1"
        return f"{root}/namespaces/{namespace}/{self.plural}" if namespace else f"{root}/{self.plural}"


RESOURCES = (Resource("Pod", "pods", True), Resource("Service", "services", True), Resource("Node", "nodes", False),
             Resource("EndpointSlice", "endpointslices", True, "discovery.k8s.io/v1"))


class KubeClient:
    """Raw HTTP to the apiserver through the session and credentials kubernetes_asyncio set up."""

    def __init__(self, api_client: Any) -> None:
        self._api = api_client
        self._cfg = api_client.configuration
        self._session: aiohttp.ClientSession = api_client.rest_client.pool_manager
        self.base = self._cfg.host.rstrip("/")
        self._extra: dict[str, Any] = {}
        if self._cfg.tls_server_name:
            self._extra["server_hostname"] = self._cfg.tls_server_name
        if self._cfg.proxy:
            self._extra.update(proxy=self._cfg.proxy, proxy_headers=self._cfg.proxy_headers)

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        """In-cluster service account when running in a pod with neither option, else the kubeconfig."""
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        try:
            if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=cfg)
            else:
                paths = kubeconfig or config.KUBE_CONFIG_DEFAULT_LOCATION  # $KUBECONFIG may list several
                if not any(Path(p).expanduser().is_file() for p in paths.split(os.pathsep)):
                    raise ValueError(f"no kubeconfig at {paths}, and not running in a pod (KUBERNETES_SERVICE_HOST "
                                     "is unset): pass --kubeconfig")
                await config.load_kube_config(config_file=paths, context=context, client_configuration=cfg,
                                              persist_config=False)
        except config.ConfigException as exc:
            raise ValueError(f"Kubernetes client configuration: {exc}") from None
        return cls(client.ApiClient(cfg))

    async def _headers(self) -> dict[str, str]:
        # auth_settings() runs the refresh hook: rotated service-account tokens are re-read.
        auth = await self._cfg.auth_settings()
        headers = {"Accept": "application/json"}
        headers.update({a["key"]: a["value"] for a in auth.values() if a.get("in") == "header" and a.get("value")})
        return headers

    async def request(self, method: str, path: str, params: dict[str, str] | None = None,
                      body: dict | None = None, timeout: float = 30) -> dict:
        """One JSON request; ApiError for any non-2xx answer."""
        headers = await self._headers()
        data = None
        if body is not None:
            data, headers["Content-Type"] = orjson.dumps(body), "application/json"
        async with self._session.request(method, self.base + path, params=params, data=data, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout), **self._extra) as resp:
            raw = await resp.read()
            doc = json_or_none(raw)
            if resp.status >= 300:
                raise ApiError.from_status(resp.status, doc)
            if not isinstance(doc, dict):
                raise ApiError(resp.status, "BadResponse", f"{method} {path} answered with no JSON object")
            return doc

    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: dict[str, str], read_timeout: float) -> AsyncIterator[Any]:
        """A watch response body (aiohttp StreamReader); ApiError unless the answer is 200."""
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_read=read_timeout)
        async with self._session.get(self.base + path, params=params, headers=await self._headers(),
                                     timeout=timeout, **self._extra) as resp:
            if resp.status != 200:
                raise ApiError.from_status(resp.status, json_or_none(await resp.read()))
            yield resp.content

    async def close(self) -> None:
        await self._api.close()


def json_or_none(raw: bytes) -> object:
    """A body as JSON, or None: an error answer need not be JSON, and a broken stream line is not."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
