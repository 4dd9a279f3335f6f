// A Concord resolver in JavaScript: each sibling holds a decimal integer
// ("42", "-7"), and the largest one wins. Tombstones and empty values are
// skipped; when nothing else is left the key stays deleted. A value that is
// not an integer keeps the siblings, so a person can look at them.
//
// Built against concord:plugin@0.1.0 (world `resolver`) with
// componentize-js; see README.md.
import { log } from 'concord:plugin/host@0.1.0';

const INTEGER = /^-?[0-9]+$/;

function text(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

function bytes(s) {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

// siblings: [{ value: Uint8Array, tombstone: boolean,
//              dot: { actor: bigint, counter: bigint }, writtenAtMs: bigint }]
export function resolve(bucket, key, siblings) {
  let best = null;
  for (const s of siblings) {
    if (s.tombstone || s.value.length === 0) continue;
    const v = text(s.value).trim();
    if (!INTEGER.test(v)) {
      log('warn', `max: a sibling of a key in ${bucket} is not an integer; keeping the siblings`);
      return { tag: 'keep-siblings' };
    }
    const n = BigInt(v);
    if (best === null || n > best) best = n;
  }
  if (best === null) return { tag: 'delete' };
  return { tag: 'resolved', val: bytes(best.toString()) };
}
