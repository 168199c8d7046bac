"""Seed 000 (Ion Stoica, "Programming in Ray: Tips for first-time users"), tip 3: ``ray.put()`` once.

The tutorial's two snippets in order: passing a 10000 x 2000 float array by value to ten
tasks, then putting it once and passing its ref.
Changed from the seed: ``import asyncray as ray`` instead of ``import ray``; ``ray.shutdown()``
between the two snippets (each calls ``ray.init``); and the array's 10000 rows are multiplied by
the environment variable ASYNCRAY_EXAMPLE_SCALE (default 1, the seed's 160 MB array; the tests
use 0.5).
"""

import os

SCALE = float(os.environ.get("ASYNCRAY_EXAMPLE_SCALE", "1"))

import time
import numpy as np
import asyncray as ray

ray.init(num_cpus = 4)

@ray.remote
def no_work(a):
    return

start = time.time()
a = np.zeros((int(10000 * SCALE), 2000))
result_ids = [no_work.remote(a) for x in range(10)]
results = ray.get(result_ids)
print("duration =", time.time() - start)

ray.shutdown()  # added: the next snippet calls ray.init() again

import time
import numpy as np
import asyncray as ray

ray.init(num_cpus = 4)

@ray.remote
def no_work(a):
    return

start = time.time()
a_id = ray.put(np.zeros((int(10000 * SCALE), 2000)))
result_ids = [no_work.remote(a_id) for x in range(10)]
results = ray.get(result_ids)
print("duration =", time.time() - start)
