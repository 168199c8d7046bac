"""Wire layer: frame codec, typed messages and the one module that owns sockets."""
