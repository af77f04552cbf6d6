"""The server stops, exit 1, on a store that closed under it (a failed open
after a snapshot's swap: store.StoreClosed); serving on would answer every
request with a store error while the node looked alive. In process: the
closed store cannot be caused from outside a real one."""
from __future__ import annotations

import asyncio

import pytest
import uvloop

from ingest import config
from ingest.server import Server, Stopped
from ingest.store import Store


async def serve_until_stopped(server: Server) -> None:
    task = asyncio.get_running_loop().create_task(server.serve())
    for _ in range(200):  # up to 10 s to start
        if server.app is not None and server.port:
            break
        await asyncio.sleep(0.05)
    assert server.port, "the server did not start"
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)  # it serves
    writer.close()
    server.store.closed_because = "could not open it again after installing a snapshot: no disk"
    await asyncio.wait_for(task, 10)


def test_a_store_closed_under_the_server_stops_it(tmp_path):
    data = tmp_path / "d"
    server = Server(config.load(None), str(data), "127.0.0.1", 0)
    with pytest.raises(Stopped, match=f"the store in {data} could not open it again .*restart the node"):
        uvloop.run(serve_until_stopped(server))
    Store(str(data), map_bytes_initial=8 << 20).close()  # its directory lock was let go
