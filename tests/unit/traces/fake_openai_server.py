"""A stdlib HTTP server that answers like an OpenAI chat endpoint from a script, for client tests.

Usage: ``python fake_openai_server.py SCRIPT_JSON LOG_JSONL``. SCRIPT_JSON holds a list of
``{"status": int, "body": str}``; the n-th POST gets the n-th reply (the last one repeats). Every
request is appended to LOG_JSONL as ``{"path", "headers", "body"}``. The server listens on
127.0.0.1 on a port the OS picks and prints that port as its first line of output.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


def main(script_path: str, log_path: str) -> None:
    replies = json.loads(Path(script_path).read_text())
    served = 0

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            nonlocal served
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            record = {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            reply = replies[min(served, len(replies) - 1)]
            served += 1
            payload = reply["body"].encode()
            self.send_response(reply["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the request log file is the record."""

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
