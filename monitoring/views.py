"""GET /metrics: the Prometheus exposition of every worker, for the scrapers the access policy allows."""

from __future__ import annotations

from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.views import APIView

from . import metrics
from .access import MetricsBearerToken, MetricsScrapeAllowed


class AnyAccept(BaseContentNegotiation):
    """Scrapers send all sorts of Accept headers (OpenMetrics first, text/plain only...): the exposition
    is served whatever they ask for, instead of DRF's 406, and errors stay JSON."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class MetricsApi(APIView):
    authentication_classes = [MetricsBearerToken]
    permission_classes = [MetricsScrapeAllowed]
    # Never throttled: a scraper behind the anonymous rate limit would lose samples and fire alerts.
    throttle_classes: list = []
    content_negotiation_class = AnyAccept

    def get(self, request: Request) -> HttpResponse:
        # The classic text format, which every Prometheus version parses, labelled as such (the client's
        # CONTENT_TYPE_LATEST announces 1.0.0, whose UTF-8 names Prometheus 2 does not know).
        body = generate_latest(metrics.scrape_registry())
        return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
