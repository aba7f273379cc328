"""``python -m reviewui.healthcheck``: exit 0 if the review page on this host answers /healthz.

The container HEALTHCHECK of the review-ui image. It asks the loopback address, so with the
page's own TLS on it does not check the certificate's name (it is the host's own process).
"""

from __future__ import annotations

import ssl
import sys
import urllib.request

from reviewui.settings import ReviewUiSettings


def main() -> int:
    settings = ReviewUiSettings()
    https = settings.tls_cert_file is not None
    url = f"{'https' if https else 'http'}://127.0.0.1:{settings.port}/healthz"
    context = ssl._create_unverified_context() if https else None  # noqa: S323 (own process)
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as reply:  # noqa: S310
            ok = reply.status == 200
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print("ok" if ok else "unhealthy")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
