"""Seed 000 (Ion Stoica, "Programming in Ray: Tips for first-time users"), tip 1: delay ``ray.get()``.

The tutorial's snippets in the order it presents them: the sequential program, the remote
program that prints refs, the eager ``ray.get`` per task, and the single ``ray.get`` on the list.
Changed from the seed: ``import asyncray as ray`` instead of ``import ray``; the two later
one-line replacements are spelled out as the full statements they replace (``ray.init`` runs once).
"""

import time

def do_some_work(x):
    time.sleep(1) # Replace this with work you need to do.
    return x

start = time.time()
results = [do_some_work(x) for x in range(4)]
print("duration =", time.time() - start, "\nresults = ", results)

import time
import asyncray as ray

ray.init(num_cpus = 4) # Specify this system has 4 CPUs.

@ray.remote
def do_some_work(x):
    time.sleep(1) # Replace this is with work you need to do.
    return x

start = time.time()
results = [do_some_work.remote(x) for x in range(4)]
print("duration =", time.time() - start, "\nresults = ", results)

# Replacement 1: call ray.get() on each remote invocation (no parallelism).
start = time.time()
results = [ray.get(do_some_work.remote(x)) for x in range(4)]
print("duration =", time.time() - start, "\nresults = ", results)

# Replacement 2: call ray.get() after invoking all tasks (parallel).
start = time.time()
results = ray.get([do_some_work.remote(x) for x in range(4)])
print("duration =", time.time() - start, "\nresults = ", results)
