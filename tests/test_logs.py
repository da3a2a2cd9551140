"""Secrets never reach a log line, even from third-party libraries logging at debug level."""

from __future__ import annotations

import io
import logging

from scalpd.logs import SecretRedactor, configure_logging


def test_third_party_debug_lines_have_the_api_key_blanked(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    # The redactor goes on every handler of the root logger: here pytest's capture handler.
    configure_logging("debug", "json", io.TextIOWrapper(io.BytesIO()), secrets=["key-123", ""])
    configure_logging("debug", "json", io.TextIOWrapper(io.BytesIO()), secrets=["sec-456"])
    assert sum(isinstance(f, SecretRedactor) for f in caplog.handler.filters) == 1  # replaced
    configure_logging(
        "debug", "json", io.TextIOWrapper(io.BytesIO()), secrets=["key-123", "sec-456"]
    )
    # What ccxt logs for each request at debug level: the headers, the API key among them.
    logging.getLogger("ccxt.base.exchange").debug(
        "GET %s, Request: %s", "http://x/api/v3/account", {"X-MBX-APIKEY": "key-123"}
    )
    logging.getLogger("other").warning("signed with sec-456 and key-123")
    assert "key-123" not in caplog.text and "sec-456" not in caplog.text
    assert "'X-MBX-APIKEY': '<redacted>'" in caplog.text
    assert "signed with <redacted> and <redacted>" in caplog.text


def test_deferred_info_lines_are_written_later_in_order_stamped_when_logged() -> None:
    import time

    import orjson
    import structlog

    from scalpd.logs import DeferredLog

    out = io.BytesIO()
    stream = io.TextIOWrapper(out)  # kept: dropping it would close `out`
    configure_logging("info", "json", stream)
    later: list = []
    log = DeferredLog(structlog.get_logger("test"), later.append)
    log.info("order", client_id="a")
    stamped = time.time()
    log.warning("order_rejected", client_id="a")  # at once
    log.info("fill", client_id="a")
    time.sleep(0.01)
    assert [orjson.loads(x)["event"] for x in out.getvalue().splitlines()] == ["order_rejected"]
    for job in later:
        job()
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["order_rejected", "order", "fill"]
    from datetime import datetime

    order_s = datetime.fromisoformat(lines[1]["timestamp"].replace("Z", "+00:00")).timestamp()
    assert order_s <= stamped  # the time of the call, not of the write
    configure_logging("error", "json", io.TextIOWrapper(io.BytesIO()))
