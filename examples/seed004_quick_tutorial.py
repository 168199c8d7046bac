"""Seed 004 ("Quick Tutorial on Ray: Parallel and Distributed Python").

Every Python snippet of the tutorial, joined in the order it presents them (the shell commands
``ray start``/``ray up`` are left out).
Changed from the seed: ``import asyncray as ray`` instead of ``import ray``. The extracted text
lost lines; each one filled in is marked ``# filled in`` (the ``ray.init()`` call, the
``@ray.remote`` decorators, the bodies of ``for _ in range(3):``, ``def long():`` and the second
``class Counter():``, the ``ray.cancel`` call, ``@ray.method(num_returns=2)`` on ``Foo.bar`` and the
``@ray.remote(num_cpus=2)`` class that the resources snippet garbled into
``class Counter(num_cpus = 2):``). Lines marked ``# added`` print results so that they show.
``ray.wait(object_refs=...)`` is the Ray 1.x spelling: asyncray accepts it with a DeprecationWarning.
"""

import time  # filled in: long() sleeps

import asyncray as ray

ray.init()  # filled in: "Without specific config, ray use all cores of the single machine."

@ray.remote  # filled in
def my_function():
    return 1

ob = my_function.remote()

y = 1
ob_y = ray.put(y)

for _ in range(3):
    print(ray.get(ob), ray.get(ob_y))  # filled in: the loop's body was lost

@ray.remote  # filled in
def second_function(a):
    return a+1

ob2 = second_function.remote(ob) 
print(ray.get(ob2))  # added

@ray.remote(num_returns=2)  # filled in
def return_multiple():
    return 1,2

a,b = return_multiple.remote()
print(ray.get([a, b]))  # added

@ray.remote  # filled in
def long():
    time.sleep(1000)  # filled in: the body was lost; a task that would run for a long time

ob_long = long.remote()
ray.cancel(ob_long)  # filled in: "To cancel a task."

ready_refs, remaining_refs = ray.wait(object_refs=[ob,ob_long],num_returns=1,timeout=None)
print(ready_refs == [ob], len(remaining_refs))  # added
try:  # added
    ray.get(ob_long)  # added
except ray.exceptions.TaskCancelledError:  # added
    print("long() was cancelled")  # added

@ray.remote  # filled in
class Counter(object):
    def __init__(self):
        self.value = 0
    def increment(self):
        self.value += 1
        return self.value

counter = Counter.remote()
ob_c = counter.increment.remote()
print(ray.get(ob_c) == 1)

class Counter():
    def __init__(self):  # filled in: the class body was lost; the same as above
        self.value = 0
    def increment(self):
        self.value += 1
        return self.value

Counter = ray.remote(Counter)
counter = Counter.remote()
print(ray.get(counter.increment.remote()) == 1)  # added

@ray.remote  # filled in
class Foo(object):

    #specify the numbers of returned object refs
    @ray.method(num_returns=2)  # filled in
    def bar(self):
        return 1,2

f = Foo.remote()
ob_1, ob_2 = f.bar.remote()
print(ray.get(ob_1), ray.get(ob_2))  # added

@ray.remote(num_cpus = 2)  # filled in: the text shows "class Counter(num_cpus = 2):"
class Counter(object):
    def __init__(self):  # filled in: the class body was lost; the same as above
        self.value = 0
    def increment(self):
        self.value += 1
        return self.value

a1 = Counter.options(num_cpus = 1).remote()
print(ray.get(a1.increment.remote()))  # added
