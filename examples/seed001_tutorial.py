"""Seed 001 (the Ray 0.x tutorial: object IDs, remote functions, task dependencies).

Every snippet of the tutorial, joined in the order it presents them.
Changed from the seed: ``import asyncray as ray`` instead of ``import ray``; the function bodies,
which lost their indentation in extraction, are indented again; and the expressions whose value
the tutorial shows with ``# prints ...`` (an interactive session echoes them) are wrapped in
``print()`` so that a script shows them too. Lines marked ``# added`` time or print what the
tutorial's comments describe. ``ray.init(num_workers=10)`` and ``num_return_vals=3`` are the
Ray 0.x spellings: asyncray accepts them with a DeprecationWarning.
"""

import asyncray as ray
ray.init(num_workers=10)

x = [1, 2, 3]
print(ray.put(x)) # prints ObjectID(b49a32d72057bdcfc4dda35584b3d838aad89f5d)

x_id = ray.put([1, 2, 3])
print(ray.get(x_id)) # prints [1, 2, 3]

result_ids = [ray.put(i) for i in range(10)]
print(ray.get(result_ids)) # prints [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

def add1(a, b):
    return a + b

@ray.remote
def add2(a, b):
    return a + b

x_id = add2.remote(1, 2)
print(ray.get(x_id)) # prints 3

import time
def f1():
    time.sleep(1)
@ray.remote
def f2():
    time.sleep(1)
# The following takes ten seconds.
start = time.time()  # added
[f1() for _ in range(10)]
print("local f1 x 10 took", time.time() - start)  # added
# The following takes one second (assuming the system has at least ten workers).
start = time.time()  # added
ray.get([f2.remote() for _ in range(10)])
print("remote f2 x 10 took", time.time() - start)  # added

add2.remote(1, 2)
add2.remote(1, ray.put(2))
add2.remote(ray.put(1), ray.put(2))
print(ray.get([add2.remote(1, 2), add2.remote(1, ray.put(2)), add2.remote(ray.put(1), ray.put(2))]))  # added

@ray.remote(num_return_vals=3)
def return_multiple():
    return 1, 2, 3
a_id, b_id, c_id = return_multiple.remote()
print(ray.get([a_id, b_id, c_id]))  # added

@ray.remote
def f(x):
    return x + 1
x = f.remote(0)
y = f.remote(x)
z = f.remote(y)
print(ray.get(z)) # prints 3

import numpy as np
@ray.remote
def generate_data():
    return np.random.normal(size=1000)
@ray.remote
def aggregate_data(x, y):
    return x + y
# Generate some random data. This launches 100 tasks that will be scheduled on
# various nodes. The resulting data will be distributed around the cluster.
data = [generate_data.remote() for _ in range(100)]
# Perform a tree reduce.
while len(data) > 1:
    data.append(aggregate_data.remote(data.pop(0), data.pop(0)))
# Fetch the result.
ray.get(data)
print(len(ray.get(data)), ray.get(data)[0].shape)  # added: one array of 1000 is left

@ray.remote
def sub_experiment(i, j):
    # Run the jth sub-experiment for the ith experiment.
    return i + j
@ray.remote
def run_experiment(i):
    sub_results = []
    # Launch tasks to perform 10 sub-experiments in parallel.
    for j in range(10):
        sub_results.append(sub_experiment.remote(i, j))
    # Return the sum of the results of the sub-experiments.
    return sum(ray.get(sub_results))
results = [run_experiment.remote(i) for i in range(5)]
print(ray.get(results)) # prints [45, 55, 65, 75, 85]
