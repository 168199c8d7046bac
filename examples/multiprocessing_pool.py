"""multiprocessing.Pool on asyncray: the standard library's API, the cluster's actors as processes.

Only the import differs from a program written for ``multiprocessing``.
"""

import os
import time

from asyncray.util.multiprocessing import Pool


def square(x):
    return x * x


def slow_square(x):
    time.sleep(0.5)
    return x * x


def worker_pid(_):
    time.sleep(0.05)
    return os.getpid()


if __name__ == "__main__":
    with Pool() as pool:
        print("map:", pool.map(square, range(10)))
        print("imap:", list(pool.imap(square, range(5))))
        print("imap_unordered:", sorted(pool.imap_unordered(square, range(5), chunksize=2)))
        print("starmap:", pool.starmap(pow, [(2, 5), (3, 3)]))
        print("apply_async:", pool.apply_async(square, (12,)).get(timeout=30))
        start = time.time()
        print("slow map:", pool.map(slow_square, range(4), chunksize=1), f"in {time.time() - start:.1f} s")
        print("processes used:", len(set(pool.map(worker_pid, range(8), chunksize=1))))
    print("done")
