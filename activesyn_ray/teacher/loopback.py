"""A loopback OpenAI-compatible endpoint: a ThreadingHTTPServer on 127.0.0.1 (port 0) whose POST
answers come from `respond(path, headers, body) -> (status, json_obj)`, one thread per request.
Tests (keys, planted answers, an in-process engine) and benchmarks (a teacher with a fixed
latency, benchmarks/pipeline.py) write only `respond`."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackOpenAI:
    def __init__(self, respond):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code, obj = respond(self.path, self.headers, body)
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        # a listen backlog of 128 (the stdlib's is 5): a batch of concurrent requests must not
        # wait on TCP's 1 s SYN retry, as no real OpenAI-compatible server makes it
        server = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 128})
        self.httpd = server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
