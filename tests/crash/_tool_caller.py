"""The tool crash test's caller: one side-effecting HTTP tool call through a system with a store.

Usage: `python _tool_caller.py STORE_FOLDER BASE_URL KEY verify|plain [linger]`.

Calls the `charge` tool (POST BASE_URL/charge, idempotency key KEY) and prints one
JSON line, `{"result": ...}` or `{"error": type name, "message": ...}`, flushed at
once. With `verify` the tool asks the service (GET BASE_URL/effects?key=KEY)
whether a call left in flight took effect. With `linger` it then waits, the
system still open, until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any

import roost


async def main(folder: str, url: str, key: str, mode: str, linger: bool) -> None:
    async with roost.ActorSystem(store=folder, log_format="json", log_level="critical") as system:

        async def verify(key: str, arguments: Mapping[str, Any]) -> roost.Done | roost.NotDone:
            async with system.http_session().get(f"{url}/effects", params={"key": key}) as answer:
                effect = await answer.json()
            return roost.NotDone() if effect is None else roost.Done({"status": 201,
                                                                      "body": effect})

        system.tools.register(roost.HttpTool(
            "charge", "POST", f"{url}/charge", session=system.http_session, timeout=30.0,
            verify=verify if mode == "verify" else None,
        ))
        try:
            result = await system.tools.call("charge", key=key, json={"amount": 5})
        except roost.RoostError as error:
            print(json.dumps({"error": type(error).__name__, "message": str(error)}), flush=True)
        else:
            print(json.dumps({"result": result}), flush=True)
        if linger:
            await asyncio.Event().wait()  # the test kills this process here


if __name__ == "__main__":
    folder, url, key, mode = sys.argv[1:5]
    asyncio.run(main(folder, url, key, mode, linger=sys.argv[5:] == ["linger"]))
