"""The consumer's metrics endpoint binds where the settings say (a pod needs 0.0.0.0 to be scraped)."""

import signal

from labelaudit.serving.settings import Settings
from labelaudit.serving.stream import consumer as consumer_module


class _NoConsumer:
    def __init__(self, settings, **options):
        pass

    def request_stop(self, *_args):
        pass

    def run(self):
        return "stats"


def _bound_address(monkeypatch, settings: Settings) -> tuple:
    bound = []
    monkeypatch.setattr(consumer_module, "StreamConsumer", _NoConsumer)
    monkeypatch.setattr(consumer_module, "start_http_server", lambda port, addr: bound.append((addr, port)))
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert consumer_module.consume(settings, metrics_port=9464) == "stats"
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    return bound[0]


def test_metrics_bind_loopback_by_default(monkeypatch):
    assert _bound_address(monkeypatch, Settings()) == ("127.0.0.1", 9464)


def test_metrics_bind_the_configured_host(monkeypatch):
    monkeypatch.setenv("LABELAUDIT_METRICS_HOST", "0.0.0.0")
    assert _bound_address(monkeypatch, Settings()) == ("0.0.0.0", 9464)
