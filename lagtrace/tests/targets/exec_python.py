"""Target for lagtrace's exec test (issue #10): a process that execs
another Python mid-trace.

Prints "READY <pid>". With --next PYTHON, SIGUSR1 makes it exec PYTHON on
this same script (without --next): the pid stays, the interpreter changes.
Without --next, it stalls its loop in after_exec_burn() for 120 ms every
300 ms, forever.
"""
import argparse
import asyncio
import os
import signal
import sys
import time


def after_exec_burn(ms):
    deadline = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < deadline:
        x = (x * 31 + 7) & 0xFFFF
    return x


async def main(a):
    loop = asyncio.get_running_loop()
    if a.next:
        def exec_next():
            os.execv(a.next, [a.next, __file__, "--truth", a.truth])
        loop.add_signal_handler(signal.SIGUSR1, exec_next)
        print("READY", os.getpid(), flush=True)
        await asyncio.sleep(3600)
    else:
        while True:
            after_exec_burn(120)
            await asyncio.sleep(0.3)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--next")
    sys.exit(asyncio.run(main(p.parse_args())))
