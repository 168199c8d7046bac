"""Seed 003 (Michael Galarnyk, "Writing your First Distributed Python Application with Ray"): Fibonacci tasks.

The tutorial's task snippets in order: the local and remote Fibonacci functions,
``os.cpu_count()``, ``run_local``/``run_remote``, the calls with 100000 and ``ray.shutdown()``.
Changed from the seed: ``import asyncray as ray`` instead of ``import ray``, and
``os.cpu_count()`` (echoed by the tutorial's notebook) is wrapped in ``print()``.
The GSOD actor part of the tutorial is in seed003_gsod_actors.py.
"""
# ruff: noqa: PIE808  (the seed writes range(0, sequence_size))

import os
import time
import asyncray as ray

# Normal Python
def fibonacci_local(sequence_size):
    fibonacci = []
    for i in range(0, sequence_size):
        if i < 2:
            fibonacci.append(i)
            continue
        fibonacci.append(fibonacci[i-1]+fibonacci[i-2])
    return sequence_size

# Ray task
@ray.remote
def fibonacci_distributed(sequence_size):
    fibonacci = []
    for i in range(0, sequence_size):
        if i < 2:
            fibonacci.append(i)
            continue
        fibonacci.append(fibonacci[i-1]+fibonacci[i-2])
    return sequence_size

print(os.cpu_count())


# Normal Python
def run_local(sequence_size):
    start_time = time.time()
    results = [fibonacci_local(sequence_size) for _ in range(os.cpu_count())]
    duration = time.time() - start_time
    print('Sequence size: {}, Local execution time: {}'.format(sequence_size, duration))

# Ray
def run_remote(sequence_size):
    # Starting Ray
    ray.init()
    start_time = time.time()
    results = ray.get([fibonacci_distributed.remote(sequence_size) for _ in range(os.cpu_count())])
    duration = time.time() - start_time
    print('Sequence size: {}, Remote execution time: {}'.format(sequence_size, duration))  

run_local(100000)
run_remote(100000)

# To explicitly stop or restart Ray, use the shutdown API
ray.shutdown()
