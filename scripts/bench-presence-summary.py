"""The summary line of scripts/bench-presence.sh, from what its nodes and queries wrote.

python3 scripts/bench-presence-summary.py <out dir> <offline bound ms>
"""

import json
import sys

out, bound = sys.argv[1], int(sys.argv[2])


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


results = lines(f"{out}/presence.jsonl")
modes = ("off", "view", "events")
node = {m: [lines(f"{out}/presence-{m}-n{k}.jsonl") for k in (1, 2, 3)] for m in modes}
churn = {m: [next(l["churn"] for l in n if "churn" in l) for n in node[m]] for m in modes}
summary = {"scenario": "presence", "offline_within_ms": bound}
for m in modes:
    sessions = next(r["sessions_per_hub"] for r in results if r.get("mode") == m and "sessions_per_hub" in r)
    redis = next(r for r in results if r.get("mode") == m and "redis_in_bytes" in r)
    row = {
        "redis_bytes_per_sec": {
            "in": round(redis["redis_in_bytes"] / redis["secs"]),
            "out": round(redis["redis_out_bytes"] / redis["secs"]),
        },
        "sessions": 3 * sessions,
        "churn_per_sec": round(sum(c["closes"] for c in churn[m]) / churn[m][0]["secs"]),
        "cpu_percent_per_hub": [round(c["cpu_secs"] / c["secs"] * 100, 1) for c in churn[m]],
        "rss_kib_before_churn": [c["rss_kib_before"] for c in churn[m]],
    }
    if m == "view":
        # Each hub holds the whole cluster's sessions; the same hub without presence is the base.
        row["bytes_per_tracked_session"] = [
            round((on["rss_kib_before"] - off["rss_kib_before"]) * 1024 / (3 * sessions))
            for on, off in zip(churn[m], churn["off"])
        ]
    if m != "off":
        queries = {
            r["query"].split("=")[0]: r for r in results if r.get("mode") == m and "query" in r
        }
        row["query_sessions_10"] = queries.get("sessionId")
        row["query_event_page_100"] = queries.get("eventName")
        killed = next(r["killed_at"] for r in results if r.get("mode") == m and "killed_at" in r)
        seen = node[m][0]
        gone = next(
            (
                l
                for l in seen
                if "instances" in l
                and l["t"] > killed
                and l["instances"] == 2
                and l["sessions"] <= 2 * sessions
            ),
            None,
        )
        row["crash_to_sessions_gone_ms"] = gone and gone["t"] - killed
        if m == "events":
            before = [l for l in seen if "offline_events" in l and l["t"] <= killed]
            base = before[-1]["offline_events"] if before else 0
            done = next(
                (
                    l
                    for l in seen
                    if "offline_events" in l
                    and l["t"] > killed
                    and l["offline_events"] - base >= sessions
                ),
                None,
            )
            row["crash_to_all_offline_events_ms"] = done and done["t"] - killed
            row["offline_events_after_crash"] = (
                max(l["offline_events"] for l in seen if "offline_events" in l) - base
            )
    summary[m] = row
print(json.dumps(summary))
