"""Log hygiene: no bearer token survives into a log line."""

from __future__ import annotations

import logging

from api.observability import JsonFormatter, RedactTokens


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)


def test_websocket_urls_lose_their_token() -> None:
    record = _record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5",
                     "/ws/tracking/TRK-1?token=eyJhbGciOi.eyJzdWIi.sig&x=1")
    assert RedactTokens().filter(record)
    line = JsonFormatter().format(record)
    assert "eyJ" not in line
    assert "token=[redacted]&x=1" in line


def test_lines_without_tokens_are_untouched() -> None:
    record = _record("connection %s", "open")
    RedactTokens().filter(record)
    assert record.getMessage() == "connection open"
