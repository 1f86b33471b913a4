r"""A deterministic OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests.

Explainer requests: answers "the word X" with X the most frequent <<marked>> token, or UNCLEAR when X marks
fewer than `clear_share` of the examples. Detection requests: YES when X appears in the excerpt, NO otherwise,
and a malformed answer when the excerpt contains `garble_token`. Whitespace and non-printable tokens are not
explained. The first `fail_first` requests get HTTP 500; with `fail_after=n`, every request after the first n
answered ones does.

Concurrency is counted without depending on scheduling: a request leaves `in_flight` before its first response
byte is sent (so a client cannot start its next request while the previous one still counts), and with
`rendezvous=n` every request waits until n requests have been in flight at once, so overlap is forced rather
than hoped for.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _whole(word: str) -> str:
    """Regex for `word` not glued to word characters on either side."""
    return rf"(?<!\w){re.escape(word)}(?!\w)"


class JudgeServer:
    def __init__(
        self,
        fail_first=0,
        garble_token=None,
        clear_share=0.6,
        delay=0.0,
        always_fail=False,
        rendezvous=0,
        fail_after=None,
    ):
        self.fail_first = fail_first
        self.garble_token = garble_token
        self.clear_share = clear_share
        self.delay = delay
        self.always_fail = always_fail
        self.rendezvous = rendezvous
        self.fail_after = fail_after
        self.n_answered = 0
        self.lock = threading.Condition()
        self.n_requests = 0
        self.n_failed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.explain_prompts: list[str] = []
        self.auth: set[str | None] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.n_requests += 1
                    fail = server.always_fail or server.n_requests <= server.fail_first
                    fail = fail or (server.fail_after is not None and server.n_answered >= server.fail_after)
                    server.n_answered += not fail
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth.add(self.headers.get("Authorization"))
                    server.lock.notify_all()
                    # hang guard only: the assertion on max_in_flight decides, not this timeout
                    server.lock.wait_for(lambda: server.max_in_flight >= server.rendezvous, timeout=60)
                time.sleep(server.delay)
                status, out = 404, b""
                if fail:
                    status = 500
                elif self.path == "/v1/chat/completions":
                    text = server.answer(body["messages"])
                    status = 200
                    out = json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": text}}]}
                    ).encode()
                with server.lock:
                    server.in_flight -= 1
                    server.n_failed += status != 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None  # clients that timed out hung up: expected
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, messages) -> str:
        user = messages[-1]["content"]
        if "Explanation:" in user and "Excerpt:" in user:
            word = re.search(r"Explanation: the word (\S+)", user).group(1)
            excerpt = user.split("Excerpt:", 1)[1]
            if self.garble_token and re.search(_whole(self.garble_token), excerpt):
                return "Hmm, it is hard to say."
            return "YES" if re.search(_whole(word), excerpt) else "NO"
        with self.lock:
            self.explain_prompts.append(user)
        examples = [line for line in user.splitlines() if line.startswith("Example")]
        firsts = [m.group(1).strip() for e in examples if (m := re.search(r"<<(.*?)>>", e))]
        word, n = collections.Counter(firsts).most_common(1)[0]
        printable = word.isprintable() and re.fullmatch(r"\S+", word)
        clear = printable and n >= self.clear_share * len(examples)
        return f"the word {word}" if clear else "UNCLEAR"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
