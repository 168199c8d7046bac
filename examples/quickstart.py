"""A quick tour of asyncray, which speaks Ray's API: ``import asyncray as ray`` and go."""

import asyncio
import time

import asyncray as ray

ray.init(num_cpus=4)  # an embedded local cluster with 4 CPU slots; workers start on demand


@ray.remote
def square(x):
    return x * x


@ray.remote
def slow(x, seconds=1.0):
    time.sleep(seconds)
    return x


@ray.remote
async def fetch(delay):  # an async task runs on the worker's event loop
    await asyncio.sleep(delay)
    return f"slept {delay} s"


@ray.remote
class Counter:  # an actor: a stateful worker process
    value = 0

    def increment(self):
        self.value += 1
        return self.value


print("1. a task:           square(7) =", ray.get(square.remote(7)))

start = time.time()
refs = [slow.remote(i) for i in range(4)]  # all four run at once
print(f"2. in parallel:      four 1 s sleeps -> {ray.get(refs)} in {time.time() - start:.2f} s")
print("3. put/get:          ray.get(ray.put(...)) =", ray.get(ray.put([1, 2, 3])))

quick, late = slow.remote("quick", 0.1), slow.remote("late", 2.0)
ready, not_ready = ray.wait([quick, late], num_returns=1)  # returns as soon as one is done
print(f"4. wait:             ready {ray.get(ready)}, {len(not_ready)} still running")

counter = Counter.remote()
print("5. an actor:         increment() x 3 ->", ray.get([counter.increment.remote() for _ in range(3)]))


async def main():
    values = await asyncio.gather(fetch.remote(0.5), fetch.remote(0.5))  # ObjectRefs are awaitable
    print("6. async tasks:     ", values)
    print("7. await a ref:      square(12) =", await square.remote(12))


asyncio.run(main())
ray.shutdown()
print("done: the cluster is shut down")
