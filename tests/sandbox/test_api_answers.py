"""The sandbox's management API answers as the real provider may: each 2xx body variant to
downgrade/upgrade, and account-list pages capped below the size asked for."""

from __future__ import annotations

import aiohttp
import pytest

from daemon.provider.client import ProviderClient
from daemon.provider.sandbox import SandboxProvider, SandboxSettings
from daemon.provider.sandbox.settings import ACTION_BODIES

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def client(sandbox: SandboxProvider, session: aiohttp.ClientSession, **kw: int) -> ProviderClient:
    s = sandbox.settings
    return ProviderClient(sandbox.base_url, s.client_id, s.client_secret, session, **kw)


async def test_each_action_body_in_turn_is_success_to_the_daemon() -> None:
    """Downgrade and upgrade answer with every body variant in turn; each is a success, odd
    bodies noted, and the account is cancelled then paid again."""
    settings = SandboxSettings(action_bodies=ACTION_BODIES)
    async with SandboxProvider(settings) as sandbox, aiohttp.ClientSession() as session:
        [account] = sandbox.create_accounts(1)
        api = client(sandbox, session)
        notes = []
        for turn in range(len(ACTION_BODIES)):
            call = api.downgrade if turn % 2 == 0 else api.upgrade
            answer = await call(account.id)
            assert answer.status == 200
            notes.append(answer.note)
        assert account.billing_state == "paid"
    assert sandbox.action_bodies == dict.fromkeys(ACTION_BODIES, 1)
    assert notes[ACTION_BODIES.index("success_string")] == 'body {"success":"true"}'
    assert notes[ACTION_BODIES.index("empty")] == "empty body"
    assert notes[ACTION_BODIES.index("unreadable")].startswith("body unreadable")
    assert notes[ACTION_BODIES.index("extra_fields")] == ""


async def test_capped_pages_still_list_every_account() -> None:
    """With pages capped at 4 accounts, the daemon's client still lists all 25, in order."""
    async with (
        SandboxProvider(SandboxSettings(page_cap=4)) as sandbox,
        aiohttp.ClientSession() as session,
    ):
        created = sandbox.create_accounts(25)
        listed = [a.id async for a in client(sandbox, session, page_size=10).list_accounts()]
    assert listed == [a.id for a in created]


def test_an_unknown_action_body_is_refused() -> None:
    """A body variant the sandbox does not know is a settings error, not a silent default."""
    with pytest.raises(ValueError, match="action_bodies"):
        SandboxSettings(action_bodies=("teapot",))  # type: ignore[arg-type]
