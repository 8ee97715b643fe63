# The in-process event-loop lag monitor that lagtrace is compared with: the
# common "sleep 1 s and see how late we woke up" coroutine. It can only see a
# stall that covers one of its wake-ups, and can never name the culprit.
# Shared by asyncio_http.py (LAG_MONITOR=1) and injected_stalls.py.
import asyncio
import json
import sys
import time

PERIOD_S = 1.0


async def lag_monitor(out=None, period=PERIOD_S):
    """Forever: sleep `period`, log one JSON line with the oversleep."""
    out = out or sys.stderr
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        over = loop.time() - due
        woke_ns = time.time_ns()
        out.write(json.dumps({"kind": "lag", "woke_unix_ns": woke_ns,
                              "oversleep_ms": round(over * 1000, 3)}) + "\n")
        out.flush()
