"""Benchmark: what the Python layer adds to a warm ``vm.run("true")``.

Boots one VM (default image, QEMU user networking: no root-only side effects) and times the same
command on it twice: a loop in Rust (``_native.Vm.time_run``, the library's own call) and a loop of
``SmolVM.run`` in Python, from the main thread (which hops to a worker thread so Ctrl-C can interrupt
the call) and from another thread (direct call). Prints the rows and the differences (goal: under
0.5 ms; on a loaded host the main thread's extra wake-up costs more).

    python python/bench/run_overhead.py [N]     (uses SMOLVM_DATA_DIR / a temp data dir)
"""

import os
import statistics
import sys
import tempfile
import threading
import time

from smolvm import SmolVM


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    base = tempfile.mkdtemp(prefix="smolvm-bench-")
    data = os.environ.get("SMOLVM_DATA_DIR") or os.path.join(base, "data")
    with SmolVM(data_dir=data, socket_dir=os.path.join(base, "s"), network="user") as vm:
        for _ in range(20):  # warm: agent connection, page cache, guest shell
            vm.run("true")
        rust, main = measure(vm, n)
        box = {}
        t = threading.Thread(target=lambda: box.update(r=measure(vm, n)))
        t.start()
        t.join()
        rust_t, other = box["r"]
        print(f"run(true) rust                  median {rust * 1e3:8.3f} ms  (n={n})")
        print(f"run(true) python, main thread   median {main * 1e3:8.3f} ms  (+{(main - rust) * 1e3:.3f})")
        print(f"run(true) python, other thread  median {other * 1e3:8.3f} ms  (+{(other - rust_t) * 1e3:.3f})")


def measure(vm, n):
    # Interleaved single calls, medians: the guest's own jitter (tens of ms under TCG) hits both
    # rows alike instead of whichever loop ran during a slow spell.
    rust_t, py_t = [], []
    for _ in range(n):
        rust_t.append(vm._native.time_run("true", 1))
        began = time.perf_counter()
        vm.run("true")
        py_t.append(time.perf_counter() - began)
    return statistics.median(rust_t), statistics.median(py_t)

if __name__ == "__main__":
    main()
