"""The env's side of the search service: an httpx client with pooling, timeouts and retries.

:class:`SearchClient` keeps one pooled ``httpx.Client`` (keep-alive connections), puts a
timeout on every request, and retries connection failures, timeouts, HTTP 429 and 5xx up to
``retries`` times, waiting ``backoff_s * 2**attempt`` between tries. Whatever goes wrong
ends as one :class:`ToolError` that says what happened; the env turns it into an
observation, so nothing raises into the trainer.

Another search service
----------------------
Point the env at any service with ``endpoint="http://host:port"``. If that service speaks
a different JSON dialect, describe it with :class:`JsonSearchApi`; keys are dotted paths
into the JSON answer (``"hits.hits"``, ``"_source.title"``; list positions as numbers).
For an Elasticsearch-style index::

    api = JsonSearchApi(
        search_path="/articles/_search", query_param="q", k_param="size",
        results_key="hits.hits", id_key="_id", title_key="_source.title", snippet_key="_source.summary",
        open_path="/articles/_doc/{id}", doc_title_key="_source.title", text_key="_source.body",
    )
    env = make_env("agentropy/Search-v0", endpoint="http://127.0.0.1:9200", api=api)

The service must index the same world as the env's questions (same ``world_seed`` and
``n_docs``), or the questions have no answer there; ``agentropy serve-search`` runs ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from agentropy.envs.search.index import Doc, Hit

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class JsonSearchApi:
    """Paths, parameter names and JSON keys of a search service; defaults fit agentropy's own."""

    search_path: str = "/search"  # GET path of the search endpoint
    query_param: str = "q"  # query-string parameter holding the query
    k_param: str = "k"  # query-string parameter holding the number of results
    results_key: str = "results"  # dotted path to the list of results in the search answer
    id_key: str = "id"  # dotted path, inside one result, to the document id
    title_key: str = "title"  # ... to the title
    snippet_key: str = "snippet"  # ... to the snippet ("" if the service has none)
    open_path: str = "/doc/{id}"  # GET path of one document; {id} is replaced, URL-quoted
    doc_title_key: str = "title"  # dotted path to the title in the document answer
    text_key: str = "text"  # dotted path to the full text in the document answer


class ToolError(Exception):
    """A search-service failure, explained. ``kind``: unreachable, timeout, http_error or garbage."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def dig(obj: Any, path: str) -> Any:
    """Follow a dotted path (``"hits.hits"``, ``"items.0.title"``) into parsed JSON; KeyError if absent."""
    for part in path.split(".") if path else []:
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            raise KeyError(path)
    return obj


def _text_field(item: Any, path: str, what: str, required: bool = True) -> str:
    try:
        value = dig(item, path)
    except KeyError:
        if required:
            raise ToolError("garbage", f"the search service's answer has no {what} at key {path!r}") from None
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ToolError("garbage", f"the search service's {what} at key {path!r} is not text but {type(value).__name__}")
    return value


class SearchClient:
    """Search and open documents on ``endpoint``; every failure becomes a :class:`ToolError`."""

    def __init__(
        self,
        endpoint: str,
        api: JsonSearchApi = JsonSearchApi(),
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        max_connections: int = 4,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must start with http:// or https://, got {endpoint!r}")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError(f"need timeout_s > 0, retries >= 0, backoff_s >= 0; got {timeout_s}, {retries}, {backoff_s}")
        self.endpoint = endpoint.rstrip("/")
        self.api = api
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(
            base_url=self.endpoint,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,  # never send loopback traffic through a proxy from the environment
        )

    def _get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        """``(status, parsed JSON or None)``, after retries; raises ToolError."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.get(path, params=params)
            except httpx.TimeoutException:
                if last:
                    raise ToolError(
                        "timeout",
                        f"the search service at {self.endpoint} did not answer within {self.timeout_s:g} s "
                        f"({attempts} attempts)",
                    ) from None
            except httpx.TransportError as exc:
                if last:
                    raise ToolError(
                        "unreachable",
                        f"could not reach the search service at {self.endpoint} ({type(exc).__name__}: {exc}; "
                        f"{attempts} attempts)",
                    ) from None
            else:
                if response.status_code in _RETRY_STATUS and not last:
                    pass
                else:
                    return response.status_code, self._json(response)
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            if response.status_code >= 400:
                return None
            raise ToolError(
                "garbage", f"the search service answered HTTP {response.status_code} with something that is not JSON"
            ) from None

    @staticmethod
    def _http_error(status: int, payload: Any) -> ToolError:
        detail = payload.get("error") if isinstance(payload, dict) else None
        return ToolError("http_error", f"the search service answered HTTP {status}" + (f": {detail}" if detail else ""))

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """Top-``k`` results for ``query``."""
        status, payload = self._get(self.api.search_path, {self.api.query_param: query, self.api.k_param: k})
        if status != 200:
            raise self._http_error(status, payload)
        try:
            results = dig(payload, self.api.results_key)
        except KeyError:
            raise ToolError("garbage", f"the search answer has no result list at key {self.api.results_key!r}") from None
        if not isinstance(results, list):
            raise ToolError("garbage", f"the search answer's {self.api.results_key!r} is not a list")
        hits = []
        for item in results[:k]:
            doc_id = _text_field(item, self.api.id_key, "result id")
            title = _text_field(item, self.api.title_key, "result title")
            snippet = _text_field(item, self.api.snippet_key, "result snippet", required=False)
            score = item.get("score", 0.0) if isinstance(item, dict) else 0.0
            hits.append(Hit(doc_id, title, snippet, float(score) if isinstance(score, (int, float)) else 0.0))
        return hits

    def open(self, doc_id: str) -> Doc | None:
        """The document ``doc_id``, or None if the service says it has none (HTTP 404)."""
        path = self.api.open_path.format(id=quote(doc_id, safe=""))
        status, payload = self._get(path)
        if status == 404:
            return None
        if status != 200:
            raise self._http_error(status, payload)
        title = _text_field(payload, self.api.doc_title_key, "document title")
        text = _text_field(payload, self.api.text_key, "document text")
        return Doc(doc_id, title, text)

    def health(self) -> dict | None:
        """``GET /health`` once, without retries; None if the service has no such endpoint or fails."""
        try:
            response = self._http.get("/health", timeout=min(self.timeout_s, 2.0))
            payload = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return payload if isinstance(payload, dict) else None

    def close(self) -> None:
        self._http.close()
