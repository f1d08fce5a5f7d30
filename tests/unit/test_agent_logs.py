"""Log format of the Prefect 0.6 agent, stdlib capture, and masking of the token in every line."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from loguru import logger

from agent.ops.logs import Masker, configure_logging

TOKEN = "tok-5f3a9c1e-very-secret"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - agent - (DEBUG|INFO|WARNING|ERROR) - .+$")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("DEBUG", secrets=[TOKEN], stream=out)
    yield out
    logger.remove()
    logger.configure(patcher=lambda record: None)
    logging.basicConfig(handlers=[], force=True)


def test_format_is_the_prefect_06_agent_format(stream: io.StringIO) -> None:
    logger.info("Starting LocalAgent")
    line = stream.getvalue().rstrip("\n")
    assert LINE.match(line), line
    assert line.endswith(" - agent - INFO - Starting LocalAgent")


def test_token_masked_in_loguru_stdlib_and_tracebacks(stream: io.StringIO) -> None:
    logger.debug("header Authorization: Bearer {t}", t=TOKEN)
    logger.info(f"token inline {TOKEN}")
    logging.getLogger("some.library").warning("library saw %s", TOKEN)
    try:
        raise RuntimeError(f"failed with {TOKEN}")
    except RuntimeError:
        logger.exception("boom")
    text = stream.getvalue()
    assert TOKEN not in text
    assert text.count("***") >= 4
    assert "library saw ***" in text


def test_noisy_libraries_are_capped_at_warning(stream: io.StringIO) -> None:
    logging.getLogger("gql.transport.httpx").info(">>> {'query': ...}")
    logging.getLogger("httpx").info('HTTP Request: POST http://user:pw@api/ "HTTP/1.1 200 OK"')
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    logging.getLogger("docker.api").debug("request")
    assert stream.getvalue() == ""


def test_masker_masks_any_bearer_value() -> None:
    mask = Masker([TOKEN, None, ""])
    assert mask(f"a {TOKEN} b") == "a *** b"
    assert mask("{'Authorization': 'Bearer other-secret'}") == "{'Authorization': 'Bearer ***'}"


def test_masker_masks_url_passwords_it_was_never_told() -> None:
    mask = Masker([TOKEN])
    line = f"pull via http://proxy:hunter2@proxy:3128 for tcp://ci:{TOKEN}@docker:2376 at http://host:80"
    assert mask(line) == "pull via http://proxy:***@proxy:3128 for tcp://ci:***@docker:2376 at http://host:80"
