// Last writer wins, in JavaScript: the latest sibling by (writtenAtMs, dot).
// The same policy as plugins/lww, for comparing languages
// (bench/plugin-languages.sh).
function later(a, b) {
  if (a.writtenAtMs !== b.writtenAtMs) return a.writtenAtMs > b.writtenAtMs;
  if (a.dot.actor !== b.dot.actor) return a.dot.actor > b.dot.actor;
  return a.dot.counter > b.dot.counter;
}

export function resolve(bucket, key, siblings) {
  let best = null;
  for (const s of siblings) if (best === null || later(s, best)) best = s;
  if (best === null) return { tag: 'keep-siblings' };
  if (best.tombstone) return { tag: 'delete' };
  return { tag: 'resolved', val: best.value };
}
