"""Must fail to type-check: a wrong argument type to .remote() is reported (tests/test_typing.py)."""

from __future__ import annotations

import asyncray


@asyncray.remote
def to_text(x: int) -> str:
    return str(x)


to_text.remote("not an int")  # E: incompatible type "str"; expected "int"
to_text.remote(1, 2)  # E: too many positional arguments
to_text.options(num_cpus=1).remote(y=1)  # E: unexpected keyword argument "y"
text: int = asyncray.get(to_text.remote(1))  # E: a str is not an int
