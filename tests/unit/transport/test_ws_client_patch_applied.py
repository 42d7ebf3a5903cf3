"""Every broker module that opens trio-websocket client connections applies the fix in
broker/transport/trio_websocket_patch.py itself: the tests' conftest imports it too,
so only a fresh interpreter shows whether the broker's own modules do."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["broker.client.broker_client", "broker.tools.terminal", "broker.proxy.upstream"])
def test_importing_a_client_module_applies_the_ping_fix(module):
    check = (f"import {module}\n"
             "from trio_websocket import WebSocketConnection\n"
             "assert WebSocketConnection._handle_ping_event.__name__ == '_answer_ping_while_open'\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
