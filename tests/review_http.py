"""The review page spoken to as a browser does, over HTTP or HTTPS: cookies kept per name as
Set-Cookie says, an Origin on every POST, the sign-in form's and the page's CSRF tokens."""

from __future__ import annotations

import http.client
import json
import re
import ssl
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlparse


class Browser:
    """A minimal HTTP client that keeps cookies like a browser (per name, as Set-Cookie says)."""

    def __init__(self, base: str, tls: ssl.SSLContext | None = None) -> None:
        self.base = base
        parsed = urlparse(base)
        self.netloc = parsed.netloc
        self.scheme = parsed.scheme
        self.tls = tls
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.netloc, timeout=30, context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.netloc, timeout=30)
        sent = dict(headers or {})
        if method == "POST" and "Origin" not in sent:  # as a browser does on every POST
            sent["Origin"] = f"{self.scheme}://{self.netloc}"
        sent = {k: v for k, v in sent.items() if v}  # "" leaves a header out
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        for header in response.headers.get_all("set-cookie") or []:
            self.set_cookie_headers.append(header)
            for name, morsel in SimpleCookie(header).items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def form(self, path: str, fields: dict[str, str], **headers: str) -> tuple[int, dict, bytes]:
        return self.request(
            "POST",
            path,
            urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", **headers},
        )

    def signin_csrf(self) -> str:
        status, _, body = self.request("GET", "/signin")
        assert status == 200
        match = re.search(rb'name="csrf" value="([^"]+)"', body)
        assert match is not None
        return match.group(1).decode()

    def sign_in(self, token: str) -> tuple[int, dict, bytes]:
        return self.form("/signin", {"csrf": self.signin_csrf(), "token": token})

    def page_csrf(self) -> str:
        status, _, body = self.request("GET", "/")
        assert status == 200
        match = re.search(rb'<meta name="csrf-token" content="([^"]+)">', body)
        assert match is not None
        return match.group(1).decode()

    def api(self, path: str, body: dict[str, Any] | None = None, **headers: str) -> tuple[int, Any]:
        if body is None:
            status, _, data = self.request("GET", path, headers=headers)
        else:
            status, _, data = self.request(
                "POST",
                path,
                json.dumps(body).encode(),
                {"Content-Type": "application/json", **headers},
            )
        return status, json.loads(data)
