"""Set-up shared by every test module."""

import signal

import pytest


@pytest.fixture(autouse=True, scope="session")
def children_take_ctrl_c():
    """Tests stop runs and servers they start with SIGINT, as a terminal's Ctrl-C does. A process started in
    the background (`nohup make test &`, a CI runner's job) ignores SIGINT, and an ignored signal stays ignored
    across exec: the children would never see it (a run went on to exit 0). Its default here is passed on."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
