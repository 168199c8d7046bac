"""Seed 000 (Ion Stoica, "Programming in Ray: Tips for first-time users"), tip 2: avoid tiny tasks.

The tutorial's snippets in order: 100,000 sequential tiny calls, 100,000 tiny remote tasks,
100 ``mega_work`` tasks of 1000 calls each, and the per-task overhead probe.
Changed from the seed: ``import asyncray as ray`` instead of ``import ray``; ``ray.shutdown()``
between the two snippets that each call ``ray.init``; and the task counts (100,000 and 100)
are multiplied by the environment variable ASYNCRAY_EXAMPLE_SCALE (default 1, the seed's
sizes; the tests use 0.2). The overhead probe keeps its 1000 calls.
"""

import os

SCALE = float(os.environ.get("ASYNCRAY_EXAMPLE_SCALE", "1"))

import time

def tiny_work(x):
    time.sleep(0.0001) # Replace this with work you need to do.
    return x

start = time.time()
results = [tiny_work(x) for x in range(int(100000 * SCALE))]
print("duration =", time.time() - start)

import time
import asyncray as ray

ray.init(num_cpus = 4)

@ray.remote
def tiny_work(x):
    time.sleep(0.0001) # Replace this is with work you need to do.
    return x

start = time.time()
result_ids = [tiny_work.remote(x) for x in range(int(100000 * SCALE))]
results = ray.get(result_ids)
print("duration =", time.time() - start)

ray.shutdown()  # added: the next snippet calls ray.init() again

import time
import asyncray as ray

ray.init(num_cpus = 4)

def tiny_work(x):
    time.sleep(0.0001) # replace this is with work you need to do
    return x

@ray.remote
def mega_work(start, end):
    return [tiny_work(x) for x in range(start, end)]

start = time.time()
result_ids = []
[result_ids.append(mega_work.remote(x*1000, (x+1)*1000)) for x in range(int(100 * SCALE))]
results = ray.get(result_ids)
print("duration =", time.time() - start)

@ray.remote
def no_work(x):
    return x

start = time.time()
num_calls = 1000
[ray.get(no_work.remote(x)) for x in range(num_calls)]
print("per task overhead (ms) =", (time.time() - start)*1000/num_calls)
