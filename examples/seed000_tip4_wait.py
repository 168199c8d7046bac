"""Seed 000 (Ion Stoica, "Programming in Ray: Tips for first-time users"), tip 4: pipeline with ``ray.wait()``.

The tutorial's two snippets in order: ``ray.get`` on all four random-length tasks then process,
and ``ray.wait`` to process each result as soon as it is ready.
Changed from the seed: ``import asyncray as ray`` instead of ``import ray``, and ``ray.shutdown()``
between the two snippets (each calls ``ray.init``).
"""

import time
import random
import asyncray as ray

ray.init(num_cpus = 4)

@ray.remote
def do_some_work(x):
    time.sleep(random.uniform(0, 4)) # Replace this with work you need to do.
    return x

def process_results(results):
    sum = 0
    for x in results:
        time.sleep(1) # Replace this with some processing code.
        sum += x
    return sum

start = time.time()
data_list = ray.get([do_some_work.remote(x) for x in range(4)])
sum = process_results(data_list)
print("duration =", time.time() - start, "\nresult = ", sum)

ray.shutdown()  # added: the next snippet calls ray.init() again


import time
import random
import asyncray as ray

ray.init(num_cpus = 4)

@ray.remote
def do_some_work(x):
    time.sleep(random.uniform(0, 4)) # Replace this with work you need to do.
    return x

def process_incremental(sum, result):
    time.sleep(1) # Replace this with some processing code.
    return sum + result

start = time.time()
result_ids = [do_some_work.remote(x) for x in range(4)]
sum = 0
while len(result_ids):
    done_id, result_ids = ray.wait(result_ids)
    sum = process_incremental(sum, ray.get(done_id[0]))
print("duration =", time.time() - start, "\nresult = ", sum)
