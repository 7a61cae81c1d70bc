"""A small client for Argilla 2.x's REST API (v1), with errors that say what to fix.

recot speaks REST rather than the ``argilla`` SDK: the SDK leaves value-less discards out of
``record.responses`` and its pins clash with the training stack, while the REST contract is what
every Argilla 2.x server serves. The API key travels in a header and never appears in a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx

from recot.errors import DataError

URL_ENV, KEY_ENV = "RECOT_ARGILLA_URL", "RECOT_ARGILLA_API_KEY"
DEFAULT_URL = "http://127.0.0.1:6900"


class ReviewError(DataError):
    """A review-side failure: what happened and how to fix it (the CLI prints it like any input error)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__("argilla", problem, fix)


class ReviewForbidden(ReviewError):
    """The key's user may not make this call (a role question: an annotator's or admin's key on an owner's endpoint)."""


class Argilla:
    """One Argilla server as one user (the API key's owner)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get(URL_ENV) or os.environ.get("ARGILLA_API_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get(KEY_ENV) or os.environ.get("ARGILLA_API_KEY")
        if not key:
            raise ReviewError("no Argilla API key", f"set {KEY_ENV} (the key of an owner or admin user)")
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers={"X-Argilla-Api-Key": key}, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Argilla:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def call(self, method: str, path: str, attempts: int = 3, **kwargs) -> Any:
        """One REST call. Idempotent calls (GET, PUT, DELETE) are retried on a dropped connection or a reply that
        is not JSON; a POST is not (it could create twice). What still fails is a ReviewError saying what to fix."""
        tries = attempts if method in ("GET", "PUT", "DELETE") else 1
        for attempt in range(1, tries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt < tries:
                    continue
                raise ReviewError(f"cannot reach Argilla at {self.url} ({type(exc).__name__})",
                                  f"start it (scripts/argilla.sh start) or set {URL_ENV} to your server") from None
            _check_status(response, method, path, self.url)
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                if attempt < tries:
                    continue
                raise ReviewError(f"Argilla at {self.url} answered {method} {path} with a body that is not JSON "
                                  f"({len(response.content)} bytes: {response.text[:80]!r})",
                                  "check the server and anything between (a proxy that cuts replies); then run again") from None

    def me(self) -> dict:
        return self.call("GET", "/me")

    def workspace_id(self, name: str) -> str:
        spaces = {w["name"]: w["id"] for w in self.call("GET", "/me/workspaces")["items"]}
        if name not in spaces:
            raise ReviewError(f"no workspace {name!r} on {self.url} (this user sees: {sorted(spaces) or 'none'})",
                              "create it in Argilla, or choose one of those with --workspace")
        return spaces[name]

    def find_dataset(self, name: str, workspace_id: str) -> dict | None:
        found = [d for d in self.call("GET", "/me/datasets")["items"] if d["name"] == name and d["workspace_id"] == workspace_id]
        return found[0] if found else None

    def usernames(self, workspace_id: str) -> dict[str, str]:
        """User id -> username of the workspace's users: the server's user list for an owner, the workspace's for an admin
        (Argilla lets only owners list every user); ids stand for names where neither may be read."""
        for path in ("/users", f"/workspaces/{workspace_id}/users"):
            try:
                return {u["id"]: u["username"] for u in self.call("GET", path)["items"]}
            except ReviewForbidden:
                continue
        return {}

    def records(self, dataset_id: str, page: int = 1000) -> Iterator[dict]:
        """Every record with its responses (discards without values included), page by page."""
        offset = 0
        while True:
            batch = self.call("GET", f"/datasets/{dataset_id}/records",
                              params={"include": "responses", "offset": offset, "limit": page})["items"]
            yield from batch
            if len(batch) < page:
                return
            offset += page


def _check_status(response: httpx.Response, method: str, path: str, url: str) -> None:
    if response.status_code == 401:
        raise ReviewError(f"Argilla at {url} refused the API key", f"set {KEY_ENV} to a valid key of that server")
    if response.status_code == 403:
        raise ReviewForbidden(f"the API key's user may not {method} {path}", "use the key of an owner or admin of the workspace")
    if response.status_code >= 400:
        raise ReviewError(f"Argilla answered {response.status_code} to {method} {path}: {response.text[:300]}",
                          "check the server log; settings sent by recot are in curation/review.py")
