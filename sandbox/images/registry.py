"""The OCI distribution protocol, client side: requests, auth, redirects and retries.

Why http.client and not httpx: the standard library costs nothing to install or import (start-up
time is measured, and this module is imported only by pull, push and login), it never starts a
thread (the single-thread rule: a pooled client with background threads would have to be closed
before the userns fork), and the protocol needs only GET/HEAD/POST/PUT with streaming bodies.
Each request opens its own connection, so download threads share nothing but the token.

Auth follows the registry's lead: every request goes out anonymously or with the token we
already have; a 401 names the scheme in WWW-Authenticate. For Bearer we fetch a token from the
realm (with basic credentials from auth.json when we have some), for Basic we send the
credentials. Redirects (blob downloads often go to a CDN) are followed without the
Authorization header when the host changes. Connection errors, 429, 5xx and 408 are retried
with exponential backoff. Registry responses are hostile input: sizes are bounded, JSON is
checked, digests are verified by the callers while streaming.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from sandbox import __version__
from sandbox.errors import AuthError, ImageNotFound, RegistryError
from sandbox.images import auth
from sandbox.images.registries import Endpoint

USER_AGENT = f"sandbox/{__version__}"
TIMEOUT = 30.0
ATTEMPTS = 4
BACKOFF = 0.5  # seconds, doubled each retry
MAX_JSON = 8 << 20  # manifests and token responses larger than this are refused
MAX_REDIRECTS = 5
_TRANSIENT = {408, 429, 500, 502, 503, 504}
_CHALLENGE_RE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


class Response:
    """An open response; read it, or iterate over chunks, then close()."""

    def __init__(self, connection: http.client.HTTPConnection, raw: http.client.HTTPResponse):
        self._connection = connection
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers

    def read_json(self, what: str) -> tuple[bytes, Any]:
        body = self.read_limited(MAX_JSON, what)
        try:
            return body, json.loads(body)
        except ValueError as e:
            raise RegistryError(
                f"the registry sent malformed JSON for {what}", context=str(e)
            ) from e

    def read_limited(self, limit: int, what: str) -> bytes:
        body = self.raw.read(limit + 1)
        if len(body) > limit:
            raise RegistryError(f"the registry's answer for {what} is larger than {limit} bytes")
        return body

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while True:
            data = self.raw.read(size)
            if not data:
                return
            yield data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.close()
        self._connection.close()


class Client:
    """One repository at one endpoint. Thread-safe: a token is shared, connections are not."""

    def __init__(self, endpoint: Endpoint, *, actions: str = "pull"):
        self.endpoint = endpoint
        self.host = endpoint.host
        self.path = endpoint.path
        self.actions = actions
        self._scheme: str | None = None
        self._authorization: str | None = None
        self._lock = threading.Lock()
        self._credentials = auth.lookup(endpoint.host)

    # -- the protocol -------------------------------------------------------------------

    def url(self, kind: str, ref: str) -> str:
        return f"/v2/{self.path}/{kind}/{ref}"

    def check(self) -> None:
        """GET /v2/ with auth: raises AuthError when the credentials are refused."""
        response = self.request("GET", "/v2/")
        response.close()
        if response.status != 200:
            raise RegistryError(f"{self.host} answered {response.status} to /v2/")

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        body_file: Any = None,
        ok: tuple[int, ...] = (200,),
        not_found: str | None = None,
    ) -> Response:
        """Send a request with retries and auth; returns a response with a status in ok."""
        delay = BACKOFF
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                response = self._authorized(method, target, headers or {}, body, body_file)
            except (OSError, http.client.HTTPException) as e:
                if last or body_file is not None:
                    raise RegistryError(
                        f"cannot reach {self.host}",
                        context=str(e) or type(e).__name__,
                        hint="check the name and your network; for a plain-HTTP registry "
                        "use --tls-verify=false",
                    ) from e
            else:
                if response.status in ok:
                    return response
                if response.status in _TRANSIENT and not last and body_file is None:
                    response.close()
                else:
                    raise self._error(response, method, target, not_found)
            time.sleep(delay + random.uniform(0, delay / 2))
            delay *= 2
        raise AssertionError("unreachable")

    def _error(
        self, response: Response, method: str, target: str, not_found: str | None
    ) -> Exception:
        detail = ""
        try:
            _, doc = response.read_json("an error")
            errors = doc.get("errors") or []
            detail = "; ".join(
                f"{e.get('code', '')}: {e.get('message', '')}"
                for e in errors
                if isinstance(e, dict)
            )
        except (RegistryError, AttributeError, OSError, http.client.HTTPException):
            pass
        finally:
            response.close()
        where = f"{self.host}/{self.path}"
        if response.status in (401, 403):
            return AuthError(
                f"{where}: access denied",
                context=detail or f"HTTP {response.status}",
                hint=f"log in with 'sandbox login {self.host}', or check the image name",
            )
        if response.status == 404 and not_found is not None:
            return ImageNotFound(f"{not_found} not found at {where}", context=detail or None)
        return RegistryError(
            f"{where}: {method} {target} failed with HTTP {response.status}",
            context=detail or None,
        )

    # -- auth ---------------------------------------------------------------------------

    def _authorized(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, body_file: Any
    ) -> Response:
        with self._lock:
            authorization = self._authorization
        response = self._send(method, target, headers, body, body_file, authorization)
        if response.status != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        response.close()
        new = self._authenticate(challenge)
        if new is None or new == authorization:
            raise AuthError(
                f"{self.host}/{self.path}: access denied",
                context="the registry refused our credentials"
                if authorization
                else "the registry requires credentials",
                hint=f"log in with 'sandbox login {self.host}', or check the image name",
            )
        with self._lock:
            self._authorization = new
        if body_file is not None:
            body_file.seek(0)
        return self._send(method, target, headers, body, body_file, new)

    def _authenticate(self, challenge: str) -> str | None:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_RE.findall(params_text))
        if scheme.lower() == "basic":
            return self._credentials.basic() if self._credentials else None
        if scheme.lower() != "bearer" or "realm" not in params:
            return None
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme not in ("https", "http") or not realm.netloc:
            raise RegistryError(f"{self.host} named a bad token realm", context=params["realm"])
        if realm.scheme == "http" and not self.endpoint.insecure:
            raise RegistryError(
                f"{self.host} wants tokens from a plain-HTTP realm",
                context=params["realm"],
                hint="use --tls-verify=false if you trust this registry",
            )
        query = {"scope": f"repository:{self.path}:{self.actions}"}
        if "service" in params:
            query["service"] = params["service"]
        sep = "&" if realm.query else ""
        target = (realm.path or "/") + "?" + realm.query + sep + urllib.parse.urlencode(query)
        headers = {}
        if self._credentials is not None:
            headers["Authorization"] = self._credentials.basic()
        response = self._raw(realm.scheme, realm.netloc, "GET", target, headers, None, None)
        try:
            if response.status in (401, 403):
                return None
            if response.status != 200:
                raise RegistryError(f"the token server {realm.netloc} answered {response.status}")
            _, doc = response.read_json("a token")
        finally:
            response.close()
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token server {realm.netloc} sent no token")
        return f"Bearer {token}"

    # -- transport ----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        body_file: Any,
        authorization: str | None,
    ) -> Response:
        host = self.host
        scheme = self._pick_scheme()
        all_headers = dict(headers)
        if authorization:
            all_headers["Authorization"] = authorization
        for _ in range(MAX_REDIRECTS):
            response = self._raw(scheme, host, method, target, all_headers, body, body_file)
            if response.status not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("Location", "")
            response.close()
            url = urllib.parse.urlsplit(
                urllib.parse.urljoin(f"{scheme}://{host}{target}", location)
            )
            if url.scheme not in ("http", "https") or not url.netloc:
                raise RegistryError(f"{self.host} redirected to {location!r}")
            if url.scheme == "http" and not self.endpoint.insecure:
                raise RegistryError(f"{self.host} redirected to plain HTTP", context=location)
            if url.netloc != host:
                # Never hand our token to another host (a CDN with a presigned URL).
                all_headers.pop("Authorization", None)
            scheme, host = url.scheme, url.netloc
            target = url.path + (f"?{url.query}" if url.query else "")
        raise RegistryError(f"{self.host}: too many redirects for {target}")

    def _pick_scheme(self) -> str:
        if self._scheme is not None:
            return self._scheme
        if not self.endpoint.insecure:
            self._scheme = "https"
            return "https"
        # Insecure: HTTPS without verification when the server speaks it, else plain HTTP.
        try:
            self._raw("https", self.host, "GET", "/v2/", {}, None, None).close()
            self._scheme = "https"
        except (OSError, http.client.HTTPException):
            self._scheme = "http"
        return self._scheme

    def _raw(
        self,
        scheme: str,
        netloc: str,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        body_file: Any,
    ) -> Response:
        connection: http.client.HTTPConnection
        if scheme == "https":
            context = ssl.create_default_context()
            if self.endpoint.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=context)
        else:
            connection = http.client.HTTPConnection(netloc, timeout=TIMEOUT)
        try:
            all_headers = {"User-Agent": USER_AGENT, **headers}
            payload: Any = body if body is not None else body_file
            if body is not None:
                all_headers["Content-Length"] = str(len(body))
            connection.request(method, target, body=payload, headers=all_headers)
            raw = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        return Response(connection, raw)
