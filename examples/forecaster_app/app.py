"""A small example forecaster (stdlib only) that serves the bundle `current` points to.

    MODELS_CURRENT=./models/current APP_PORT=8000 python examples/forecaster_app/app.py

- ``POST /reload``: re-reads ``current`` (bearer token required when RELOAD_TOKEN or
  RELOAD_TOKEN_FILE is set); 200 when the new model loaded, 500 when it is broken (the
  old model keeps serving), 401 on a wrong token.
- ``GET /predict?x=2``: ``{"version": ..., "prediction": intercept + slope * x}``.
- ``GET /healthz``: 200 when a model is loaded, else 503.

The model is ``model.json`` in the bundle: ``{"slope": 1.5, "intercept": 0.2}``; the
version is the manifest's ``version``, else the version directory's name.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Model:
    def __init__(self, root: Path) -> None:
        resolved = Path(os.path.realpath(root))
        params = json.loads((resolved / "model.json").read_text())
        self.slope = float(params["slope"])
        self.intercept = float(params["intercept"])
        manifest = resolved / "manifest.json"
        version = json.loads(manifest.read_text()).get("version") if manifest.exists() else None
        self.version = version or resolved.name

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x


UNREADABLE = "\0unreadable"  # a token file is configured but cannot be read: refuse all


def expected_token() -> str | None:
    if os.environ.get("RELOAD_TOKEN_FILE"):
        try:
            return Path(os.environ["RELOAD_TOKEN_FILE"]).read_text().strip() or UNREADABLE
        except OSError:
            return UNREADABLE
    return os.environ.get("RELOAD_TOKEN") or None


class App:
    def __init__(self, current: Path) -> None:
        self.current = current
        self.model: Model | None = None
        self.lock = threading.Lock()
        self.reloads = 0
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.model = Model(current)

    def reload(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            try:
                model = Model(self.current)
            except (OSError, ValueError, KeyError) as exc:
                return 500, {"error": f"cannot load the model: {exc}"}
            self.model = model
            self.reloads += 1
            return 200, {"version": model.version}


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if urlsplit(self.path).path != "/reload":
                return self._reply(404, {"error": "not found"})
            token = expected_token()
            given = self.headers.get("Authorization", "")
            if token == UNREADABLE or (token and not hmac.compare_digest(given, f"Bearer {token}")):
                return self._reply(401, {"error": "bad token"})
            return self._reply(*app.reload())

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            model = app.model
            if url.path == "/healthz":
                return self._reply(200 if model else 503, {"loaded": bool(model)})
            if url.path != "/predict":
                return self._reply(404, {"error": "not found"})
            if model is None:
                return self._reply(503, {"error": "no model loaded"})
            x = float(parse_qs(url.query).get("x", ["1"])[0])
            return self._reply(200, {"version": model.version, "prediction": model.predict(x)})

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main() -> int:
    current = Path(os.environ.get("MODELS_CURRENT", "/models/current"))
    addr = os.environ.get("APP_ADDR", "0.0.0.0")  # noqa: S104 - the app serves the pod
    server = ThreadingHTTPServer(
        (addr, int(os.environ.get("APP_PORT", "8000"))), make_handler(App(current))
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"forecaster app on {addr}:{server.server_port}, serving {current}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
