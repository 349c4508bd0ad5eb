"""The daemon never runs half-alive: a part that ends takes the whole process down."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from daemon.config import load_config, load_secrets
from daemon.service import Daemon

pytestmark = pytest.mark.anyio


async def test_a_dead_store_writer_stops_the_daemon(setup: Any) -> None:
    """If the event store's writer task dies, Daemon.run fails instead of serving on."""
    config = load_config(None, setup.env)
    daemon = Daemon(config, load_secrets(config, setup.env), reload=lambda: None)
    with anyio.fail_after(20):
        with pytest.raises(BaseExceptionGroup) as failure:  # noqa: PT012
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await daemon.ready.wait()
                daemon.store._writer.task.cancel()  # what a crash of the writer looks like
                await anyio.sleep(15)  # never reached: the group fails first
    assert "writer" in repr(failure.value.exceptions)
