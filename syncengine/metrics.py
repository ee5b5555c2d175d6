"""The daemon's Prometheus metrics, on a registry of their own (served at ``/metrics``).

Counters are fed once per finished run from its ``SyncResult`` and from the HTTP clients of
the run's connectors (``HttpStats``: requests, retries, 429s, failures)::

    syncengine_runs_total{pipeline, outcome}                 ok, conflicts, errors, guard,
                                                             failed, stopped
    syncengine_run_duration_seconds{pipeline}                histogram
    syncengine_actions_total{pipeline, entity, member, op}   writes applied
    syncengine_record_errors_total{pipeline, entity, member} record problems and failed writes
    syncengine_http_requests_total{pipeline, connector}      attempts, retries included
    syncengine_http_retries_total{pipeline, connector}
    syncengine_http_throttled_total{pipeline, connector}     429 responses
    syncengine_http_failures_total{pipeline, connector}      requests that ended in an error
    syncengine_runs_skipped_total{pipeline, reason}          paused, backoff, lease_held
    syncengine_last_success_timestamp_seconds{pipeline}
    syncengine_pipeline_paused{pipeline}                     1 while paused
    syncengine_pipeline_failures{pipeline}                   consecutive failed runs
    syncengine_pipeline_running{pipeline}                    1 while a run is in flight
    syncengine_open_conflicts{pipeline}                      after the last run
    syncengine_scheduler_up                                  1 while the scheduler runs
    syncengine_config_reloads_total{result}                  ok, rejected
    syncengine_webhook_deliveries_total{connector, outcome}  stored, duplicate, ping
    syncengine_webhook_refused_total{reason}                 signature, stale,
                                                             unknown_connector, too_large,
                                                             content_type, not_json,
                                                             not_event, store_failed
    syncengine_webhook_runs_total{pipeline}                  event-driven runs started
    syncengine_alerts_sent_total{channel, event}             alerts delivered (webhook, email)
    syncengine_alert_failures_total{channel}                 alerts a channel did not take
                                                             after every retry
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from syncengine.connector import Connector
from syncengine.engine import SyncResult
from syncengine.http import HttpClient

__all__ = ["CONTENT_TYPE_LATEST", "HTTP_FIELDS", "Metrics", "http_stats"]

HTTP_FIELDS = ("requests", "retries", "throttled", "failures")
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def http_stats(connectors: Iterable[Connector]) -> dict[str, dict[str, float]]:
    """connector name -> its HTTP clients' counters summed (connectors without one: absent)."""
    out: dict[str, dict[str, float]] = {}
    for conn in connectors:
        clients = [v for v in vars(conn).values() if isinstance(v, HttpClient)]
        if not clients:
            continue
        totals = out.setdefault(conn.name, dict.fromkeys(HTTP_FIELDS, 0.0))
        for client in clients:
            stats = client.stats.as_dict()
            for name in HTTP_FIELDS:
                totals[name] += stats[name]
    return out


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = ["pipeline"]
        self.runs = Counter(
            "syncengine_runs", "Finished runs by outcome.", [*p, "outcome"], registry=r
        )
        self.duration = Histogram(
            "syncengine_run_duration_seconds",
            "Run durations.",
            p,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.actions = Counter(
            "syncengine_actions",
            "Writes applied to members.",
            [*p, "entity", "member", "op"],
            registry=r,
        )
        self.record_errors = Counter(
            "syncengine_record_errors",
            "Record-level problems and failed writes.",
            [*p, "entity", "member"],
            registry=r,
        )
        cp = [*p, "connector"]
        self.http = {
            "requests": Counter(
                "syncengine_http_requests", "HTTP requests sent (every attempt).", cp, registry=r
            ),
            "retries": Counter(
                "syncengine_http_retries", "HTTP attempts repeated.", cp, registry=r
            ),
            "throttled": Counter(
                "syncengine_http_throttled", "HTTP 429 responses.", cp, registry=r
            ),
            "failures": Counter(
                "syncengine_http_failures", "HTTP requests that ended in an error.", cp, registry=r
            ),
        }
        self.skipped = Counter(
            "syncengine_runs_skipped", "Scheduled runs not started.", [*p, "reason"], registry=r
        )
        self.last_success = Gauge(
            "syncengine_last_success_timestamp_seconds",
            "When the last completed run finished (Unix time).",
            p,
            registry=r,
        )
        self.paused = Gauge(
            "syncengine_pipeline_paused", "1 while the pipeline is paused.", p, registry=r
        )
        self.failures = Gauge(
            "syncengine_pipeline_failures", "Consecutive failed runs.", p, registry=r
        )
        self.running = Gauge(
            "syncengine_pipeline_running", "1 while a run is in flight.", p, registry=r
        )
        self.open_conflicts = Gauge(
            "syncengine_open_conflicts", "Open conflicts after the last run.", p, registry=r
        )
        self.scheduler_up = Gauge(
            "syncengine_scheduler_up", "1 while the scheduler runs.", registry=r
        )
        self.reloads = Counter(
            "syncengine_config_reloads", "Config reloads.", ["result"], registry=r
        )
        self.webhook_deliveries = Counter(
            "syncengine_webhook_deliveries",
            "Webhook deliveries accepted (stored, a duplicate of a stored one, the ping).",
            ["connector", "outcome"],
            registry=r,
        )
        self.webhook_refused = Counter(
            "syncengine_webhook_refused",
            "Webhook deliveries refused, by reason; nothing of them was stored.",
            ["reason"],
            registry=r,
        )
        self.webhook_runs = Counter(
            "syncengine_webhook_runs", "Event-driven runs started.", p, registry=r
        )
        self.alerts_sent = Counter(
            "syncengine_alerts_sent",
            "Alerts delivered, by channel and event.",
            ["channel", "event"],
            registry=r,
        )
        self.alert_failures = Counter(
            "syncengine_alert_failures",
            "Alerts a channel did not take after every retry.",
            ["channel"],
            registry=r,
        )

    def observe_run(
        self,
        pipeline: str,
        outcome: str,
        seconds: float,
        result: SyncResult | None,
        http: Mapping[str, Mapping[str, float]],
    ) -> None:
        self.runs.labels(pipeline, outcome).inc()
        self.duration.labels(pipeline).observe(seconds)
        for connector, stats in http.items():
            for name, counter in self.http.items():
                amount = stats.get(name, 0.0)
                if amount:
                    counter.labels(pipeline, connector).inc(amount)
        if result is None:
            return
        self.open_conflicts.labels(pipeline).set(result.open_conflicts)
        for ent in result.outcomes:
            entity = ent.plan.entity
            for member, ops in ent.applied.items():
                for op, count in ops.items():
                    if count:
                        self.actions.labels(pipeline, entity, member, op).inc(count)
            for issue in (*ent.plan.issues, *ent.failures):
                self.record_errors.labels(pipeline, entity, issue.member or "").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> Any:
        """A sample's current value (tests and ``/healthz``), or None."""
        return self.registry.get_sample_value(name, dict(labels or {}))
