"""One BMC's Redfish service over httpx: GETs as JSON with readable errors, and its login.

Login follows DSP0266's session login: with a username, the first request POSTs
`{"UserName", "Password"}` to `/redfish/v1/SessionService/Sessions` (the URI the spec fixes)
and sends the `X-Auth-Token` it answers with every later request of every later poll. A
request answered 401 while a session is in use logs in again once and repeats (the session
expired or the BMC restarted). A service without sessions (the POST answers 404, 405 or 501,
or succeeds without a token, as sushy-tools' `sushy-static` does) is read with HTTP basic
authentication instead. So is one that refuses the login POST itself with 401 (sushy-tools'
`sushy-emulator` asks basic auth of every request, the login too): then the basic-auth request
decides, and if it is refused too, the next poll tries a session again. `close()` deletes the session. The token is kept out of logs,
errors and reprs: only `auth` ("session", "basic", "none") says how the client logs in.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)
SERVICE_ROOT = "/redfish/v1/"
SESSIONS = "/redfish/v1/SessionService/Sessions"
TOKEN_HEADER = "X-Auth-Token"
NO_SESSIONS = frozenset({404, 405, 501})  # the service has no SessionService: basic auth
MAX_PAGES = 50  # pages of one collection read per poll at most: a BMC whose nextLinks never end
# HTTP status -> readable reason ({u}: the URL asked)
STATUS_REASONS = {
    401: "authentication failed (check the BMC username/password): {u} answered HTTP 401",
    403: "the BMC account may not read {u} (HTTP 403)",
    404: "the BMC has no {u} (HTTP 404)",
    503: "the BMC is unavailable (HTTP 503 from {u}); it may be busy or restarting",
}


class RedactTokens(logging.Filter):
    """Blanks `X-Auth-Token` values in httpcore's DEBUG traces of response headers."""

    PATTERN = re.compile(r"(b?'x-auth-token', b?')[^']*'", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message; never drop it."""
        if isinstance(record.msg, str) and "auth-token" in record.msg.lower():
            record.msg = self.PATTERN.sub(r"\1<redacted>'", record.msg)
        return True


for _name in ("httpcore.http11", "httpcore.http2"):
    logging.getLogger(_name).addFilter(RedactTokens())


@functools.cache
def tls_context(verify: bool) -> ssl.SSLContext:
    """The TLS context every BMC client with this `verify` shares. httpx builds one per client
    otherwise, loading the CA bundle each time: ~0.8 MB and tens of ms of CPU per BMC, which
    for 1,000 BMCs was 800 MB and over a minute before the first poll (benchmarks/redfish_poll.py)."""
    return httpx.create_ssl_context(verify=verify)


class RedfishError(Exception):
    """A request the BMC did not answer usefully; the message is readable as it is."""

    def __init__(self, message: str, *, timed_out: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.timed_out, self.status = timed_out, status


class RedfishClient:
    """GETs against one Redfish service, logged in by session (else basic auth); see the module
    docstring. `base_url` is `https://HOST[:PORT]` (a trailing `/redfish/v1` is dropped)."""

    def __init__(self, base_url: str, username: str = "", password: str = "", *, timeout: float,
                 verify: bool = True) -> None:
        """Set up the connection pool; nothing is sent before the first `get()`."""
        self._username, self._password = username, password
        self._token: str | None = None
        self._session_uri: str | None = None
        self.auth = "" if username else "none"  # "" until the first login: session | basic
        self._refused_login = False  # basic auth because the login POST answered 401
        self.logins = 0  # sessions created (a renewal counts)
        self._timeout, self._deadline, self._budget = timeout, None, 0.0
        self._http = httpx.Client(base_url=base_url.rstrip("/").removesuffix("/redfish/v1"), verify=tls_context(verify),
                                  timeout=timeout, headers={"Accept": "application/json"})

    def __repr__(self) -> str:
        return f"RedfishClient({self.base_url!r}, auth={self.auth or 'not yet'!r})"

    @property
    def base_url(self) -> str:
        """The service's scheme, host and port."""
        return str(self._http.base_url).rstrip("/")

    def set_deadline(self, seconds: float | None) -> None:
        """Bound every request from now on to end within `seconds` from now (None: no bound)."""
        self._budget = seconds or 0.0
        self._deadline = None if seconds is None else time.monotonic() + seconds

    def get(self, path: str) -> dict[str, Any]:
        """GET one resource as JSON, or raise RedfishError with a readable reason."""
        if self.auth == "":
            self._login()
        response = self._send("GET", path)
        if response.status_code == 401 and self.auth == "session":
            log.info("Redfish session at %s was refused; logging in again", self.base_url)
            self._login()
            response = self._send("GET", path)
        if response.status_code == 401 and self._refused_login:
            self.auth = ""  # refused both ways: log in afresh next time
        if response.status_code != 200:
            raise self._status_error(response, path)
        try:
            body = response.json()
        except ValueError as exc:
            raise RedfishError(f"{self.base_url}{path} did not answer JSON") from exc
        if not isinstance(body, dict):
            raise RedfishError(f"{self.base_url}{path} did not answer a Redfish resource")
        return body

    def close(self) -> None:
        """Delete the session (best effort: the BMC expires it anyway) and close the connections."""
        self.set_deadline(None)  # a poll's deadline is no limit on saying goodbye
        if self._session_uri is not None:
            try:
                self._send("DELETE", self._session_uri)
            except RedfishError:
                pass
            self._token = self._session_uri = None
        self._http.close()

    def _login(self) -> None:
        """Create a session; fall back to basic auth where the service has none."""
        self._token = None
        response = self._send("POST", SESSIONS, json={"UserName": self._username, "Password": self._password})
        token = response.headers.get(TOKEN_HEADER)
        self._refused_login = response.status_code == 401
        if response.is_success and token:
            self._token, self.auth = token, "session"
            self._session_uri = response.headers.get("Location") or _odata_id(response)
            self.logins += 1
        elif response.is_success or response.status_code in NO_SESSIONS or self._refused_login:
            self.auth = "basic"
        else:
            raise self._status_error(response, SESSIONS)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        headers = {TOKEN_HEADER: self._token} if self._token else {}
        auth = httpx.BasicAuth(self._username, self._password) if self.auth == "basic" else None
        timeout = self._timeout
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise RedfishError(f"the BMC did not finish answering within {self._budget:g} s (the target "
                                   f"timeout); {method} {url} not sent", timed_out=True)
            timeout = min(timeout, left)
        try:
            return self._http.request(method, path, headers=headers, auth=auth, timeout=timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise RedfishError(f"no answer from {url} within {timeout:.3g} s", timed_out=True) from exc
        except httpx.HTTPError as exc:
            raise RedfishError(f"cannot reach {url}: {exc}") from exc

    def _status_error(self, response: httpx.Response, path: str) -> RedfishError:
        status = response.status_code
        reason = STATUS_REASONS.get(status, "{u} answered HTTP " + str(status))
        return RedfishError(reason.format(u=f"{self.base_url}{path}") + redfish_message(response), status=status)


def collection_pages(get: Callable[[str], Mapping[str, Any]], path: str, *,
                     max_pages: int = MAX_PAGES) -> Iterator[list[Mapping[str, Any]]]:
    """Each page of the Redfish collection at `path`, as its `Members`, read with `get` and
    following `Members@odata.nextLink` (DSP0266's paging; the older bare `@odata.nextLink` too),
    lazily: stop iterating and no further page is asked. Ends after `max_pages` pages, or at a
    next link already read (a BMC that loops). A page's failure is `get`'s error."""
    read: set[str] = set()
    page_path: str | None = path
    while page_path is not None and page_path not in read and len(read) < max_pages:
        read.add(page_path)
        page = get(page_path)
        yield [m for m in page.get("Members") or [] if isinstance(m, Mapping)]
        page_path = _local(page.get("Members@odata.nextLink") or page.get("@odata.nextLink"))


def collection_ids(get: Callable[[str], Mapping[str, Any]], path: str) -> Iterator[str]:
    """The `@odata.id` of each member of the collection at `path`, over all its pages, lazily."""
    for page in collection_pages(get, path):
        yield from (m["@odata.id"] for m in page if isinstance(m.get("@odata.id"), str) and m["@odata.id"])


def _local(link: Any) -> str | None:
    """A next link as a path on the same service (an absolute URL keeps its path and query)."""
    if not isinstance(link, str) or not link:
        return None
    parts = urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "") if parts.scheme else link


def _odata_id(response: httpx.Response) -> str | None:
    """The `@odata.id` of a JSON answer (a created session), else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("@odata.id") if isinstance(body, dict) else None


def redfish_message(response: httpx.Response) -> str:
    """`: <message>` from a Redfish error body (`{"error": {"message": ...}}`), else ''."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {message}" if isinstance(message, str) and message else ""
