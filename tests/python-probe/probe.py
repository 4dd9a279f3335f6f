"""A resolver that reports what WASI gives it: the clocks, random bytes,
environment and files. Concord serves WASI with none of these, so the
report is the same on every call and every node (tests/tests/examples.rs).
"""

import os
import time

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def resolve(self, bucket: str, key: bytes, siblings: list[types.Sibling]) -> types.Resolution:
        try:
            with open("/etc/hostname") as f:
                files = "readable:" + f.read().strip()
        except OSError:
            files = "none"
        report = (
            f"time={time.time()} monotonic={time.monotonic()} random={os.urandom(8).hex()} "
            f"env={len(os.environ)} files={files}"
        )
        print(report)
        return types.Resolution_Resolved(report.encode())
