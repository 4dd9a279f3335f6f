"""Last writer wins, in Python: the latest sibling by (written_at_ms, dot).

The same policy as plugins/lww, for comparing languages
(bench/plugin-languages.sh).
"""

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def resolve(self, bucket: str, key: bytes, siblings: list[types.Sibling]) -> types.Resolution:
        if not siblings:
            return types.Resolution_KeepSiblings()
        s = max(siblings, key=lambda s: (s.written_at_ms, s.dot.actor, s.dot.counter))
        if s.tombstone:
            return types.Resolution_Delete()
        return types.Resolution_Resolved(s.value)
