#!/usr/bin/env python3
# A hostile Python target for lagtrace's security tests (issue #10), CPython
# 3.11 to 3.13. An asyncio loop that on SIGUSR1 stalls itself, according to
# --mode:
#   cyclic   makes its own frame chain cyclic with ctypes (the interpreter
#            frame's `previous` points at itself) and spins in that state,
#            so a reader walking the chain never reaches its end; the chain
#            is restored before the function returns
#   names    spins in a function whose name holds a newline and escape
#            sequences (a forged span line) and one whose name is 6000
#            characters long
#   threads  starts 500 idle threads first, then sleeps in the loop
# Prints "READY <pid>", and "DONE" after the stalls; --truth is ignored.
import argparse
import asyncio
import ctypes
import signal
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--mode", default="cyclic")
parser.add_argument("--stalls", type=int, default=2)
parser.add_argument("--stall-ms", type=int, default=2500)
parser.add_argument("--truth")
args = parser.parse_args()

# PyFrameObject: PyObject_HEAD (16 bytes), f_back, then f_frame, the
# _PyInterpreterFrame*. There `previous` follows f_code/f_executable in 3.12
# and 3.13; in 3.11 it follows f_func, f_globals, f_builtins, f_locals,
# f_code and frame_obj.
F_FRAME = 24
PREVIOUS = 48 if sys.version_info[:2] == (3, 11) else 8


def spin(ms):
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        pass


def spin_in_a_cycle(ms):
    frame = ctypes.c_void_p.from_address(id(sys._getframe()) + F_FRAME).value
    previous = ctypes.c_void_p.from_address(frame + PREVIOUS)
    saved = previous.value
    previous.value = frame
    try:
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end:
            pass
    finally:
        previous.value = saved


FORGED = "x\n00:00:00.000  python3[1]  blocked 9999 ms  forged\x1b]0;pwned\x07\x1b[2J"
forged = {}
exec("def burn(ms):\n    spin(ms)\n", globals(), forged)
forged["burn"].__code__ = forged["burn"].__code__.replace(co_name=FORGED, co_qualname=FORGED)
LONG = "long_" + "x" * 6000
exec("def burn_long(ms):\n    spin(ms)\n", globals(), forged)
forged["burn_long"].__code__ = forged["burn_long"].__code__.replace(co_name=LONG, co_qualname=LONG)


def stall(n):
    if args.mode == "cyclic":
        spin_in_a_cycle(args.stall_ms)
    elif args.mode == "names":
        (forged["burn"] if n % 2 == 0 else forged["burn_long"])(args.stall_ms)
    else:
        time.sleep(args.stall_ms / 1000)


async def main():
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    if args.mode == "threads":
        stop = threading.Event()
        for i in range(500):
            threading.Thread(target=stop.wait, name=f"idle-{i}", daemon=True).start()
    print(f"READY {__import__('os').getpid()}", flush=True)
    await go.wait()
    for n in range(args.stalls):
        stall(n)
        await asyncio.sleep(0.02)
    print("DONE", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
