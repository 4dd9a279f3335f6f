"""A Concord resolver in Python: a shopping cart as a set of item names.

Each sibling holds a JSON list of strings (["apple", "pear"]). The
resolution is their union, sorted, so every node that merges the same
siblings writes the same bytes. Tombstones are skipped; when nothing else is
left the key stays deleted. A sibling that is not such a list keeps the
siblings, so a person can look at them.

Built against concord:plugin@0.1.0 (world `resolver`) with componentize-py;
see README.md. Everything is imported at the top: a plugin has no file
system to import from during a call. What it prints becomes its log lines.
"""

import json

import wit_world
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def resolve(self, bucket: str, key: bytes, siblings: list[types.Sibling]) -> types.Resolution:
        items: set[str] = set()
        live = 0
        for s in siblings:
            if s.tombstone or not s.value:
                continue
            try:
                cart = json.loads(s.value)
            except ValueError:
                cart = None
            if not isinstance(cart, list) or not all(isinstance(i, str) for i in cart):
                host.log(host.Level.WARN, f"cart: a sibling of a key in {bucket} is not a list of item names")
                return types.Resolution_KeepSiblings()
            items.update(cart)
            live += 1
        if live == 0:
            return types.Resolution_Delete()
        merged = json.dumps(sorted(items), separators=(",", ":"))
        print(f"cart: merged {live} carts into {len(items)} items")
        return types.Resolution_Resolved(merged.encode())
