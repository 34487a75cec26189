"""Locust users for benchmarks/serve_load.py: each asks POST /v1/recommend for known users, one
request after another (a closed loop: concurrency = number of users), and records every answer.

Settings come from the environment (serve_load.py sets them):
  TTE_USERS: a JSON file with the user ids to ask for (taken in turn, each user its own offset).
  TTE_RECORD: where to write, at exit, one JSON line per answer:
              [start (s, monotonic), latency_ms, status, user, version, item ids, scores].
  TTE_K: items per request (default 10).
"""

import json
import os
import time

from locust import FastHttpUser, constant, events, task

USERS = json.load(open(os.environ["TTE_USERS"]))
K = int(os.environ.get("TTE_K", "10"))
RECORDS: list = []
_next_offset = [0]


class Recommending(FastHttpUser):
    wait_time = constant(0)

    def on_start(self):
        self.position = _next_offset[0] * 7919
        _next_offset[0] += 1

    @task
    def recommend(self):
        user = USERS[self.position % len(USERS)]
        self.position += 1
        started = time.perf_counter()
        with self.client.post("/v1/recommend", json={"user_id": user, "k": K},
                              catch_response=True) as response:
            latency_ms = (time.perf_counter() - started) * 1e3
            version, ids, scores = None, None, None
            try:
                answer = response.json()
                version = answer.get("version")
                items = answer.get("recommendations") or []
                ids = [item["item_id"] for item in items]
                scores = [item["score"] for item in items]
            except Exception as exc:                      # noqa: BLE001
                response.failure(f"not a JSON answer: {exc}")
            else:
                if response.status_code != 200 or len(ids) != K:
                    response.failure(f"status {response.status_code}, {len(ids)} items")
            RECORDS.append([started, latency_ms, response.status_code, user, version, ids, scores])


@events.quitting.add_listener
def _write_records(environment, **_):
    with open(os.environ["TTE_RECORD"], "w", encoding="utf-8") as f:
        for record in RECORDS:
            f.write(json.dumps(record) + "\n")
