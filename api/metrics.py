"""Prometheus metrics: a per-route latency histogram (ASGI middleware) and gauges read at scrape time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.holder import IndexHolder
from core.db.repo import count_jobs_by_status

logger = logging.getLogger(__name__)

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceCollector(Collector):
    """Jobs by status (one query per scrape), the active model and the index size."""

    def __init__(self, holder: IndexHolder) -> None:
        self.holder = holder

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("recdistill_jobs", "Jobs by status", labels=["status"])
        try:
            with self.holder.sessions() as session:
                for status, n in count_jobs_by_status(session).items():
                    jobs.add_metric([status], n)
        except Exception:  # a scrape must not fail because the database is briefly away
            logger.exception("could not count jobs for /metrics")
        yield jobs
        bundle = self.holder.bundle
        info = InfoMetricFamily("recdistill_active_model", "The model served by this process")
        items = GaugeMetricFamily("recdistill_index_items", "Items in the served FAISS index")
        users = GaugeMetricFamily("recdistill_index_users", "Users known to the served bundle")
        if bundle is not None:
            info.add_metric([], {"model_id": bundle.model_id, "index": bundle.kind, "dim": str(bundle.dim),
                                 "activation_id": str(self.holder.activation_id)})
        items.add_metric([], 0 if bundle is None else bundle.n_items)
        users.add_metric([], 0 if bundle is None else bundle.n_users)
        yield info
        yield items
        yield users


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, holder: IndexHolder) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "recdistill_http_request_duration_seconds",
            "Request latency by route template",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ServiceCollector(holder))


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead); labels by the matched route's template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            # path_format drops converters: "/recommend/{user:path}" -> "/recommend/{user}"
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "<unmatched>"
            self.metrics.latency.labels(scope["method"], template, str(status[0])).observe(
                time.perf_counter() - start
            )
