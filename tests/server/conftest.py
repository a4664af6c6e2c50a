"""Server tier: one real ComfyUI server subprocess (CPU, free loopback port) with the pack linked in."""

import pytest
from comfy_server import ComfyServer


@pytest.fixture(scope="session")
def server():
    srv = ComfyServer(cpu=True).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def object_info(server):
    return server.object_info()
