import t from 'tap';
import { canonicalJson } from '../../../src/protocol/canonical.ts';

t.test('keys sorted at every depth, no whitespace, arrays in order', async (t) => {
  t.equal(canonicalJson({ b: 1, a: { d: [3, 1, { z: null, y: true }], c: 'x' } }), '{"a":{"c":"x","d":[3,1,{"y":true,"z":null}]},"b":1}');
  t.equal(canonicalJson({ b: 1, a: 2 }), canonicalJson({ a: 2, b: 1 }), 'field order does not matter');
});

t.test('numbers and strings as ECMAScript/RFC 8785 write them', async (t) => {
  t.equal(canonicalJson([1e21, 0.1, -0, 1.5e-7, 100]), '[1e+21,0.1,0,1.5e-7,100]');
  t.equal(canonicalJson('é"\\\n\u0001'), '"é\\"\\\\\\n\\u0001"');
  // Keys sort by UTF-16 code units, as RFC 8785 says.
  t.equal(canonicalJson({ '\u00e9': 1, z: 2, A: 3 }), '{"A":3,"z":2,"\u00e9":1}');
});

t.test('refuses what has no single encoding, naming where', async (t) => {
  const bad: [unknown, RegExp][] = [
    [{ a: NaN }, /^\$\.a: NaN is not a finite number$/],
    [{ a: [1, Infinity] }, /^\$\.a\[1\]: Infinity is not a finite number$/],
    [{ a: undefined }, /^\$\.a: undefined$/],
    [{ a: 1n }, /^\$\.a: a bigint cannot be encoded$/],
    [{ a: new Date(0) }, /^\$\.a: not a plain object$/],
    [{ f: () => 1 }, /^\$\.f: a function cannot be encoded$/],
  ];
  for (const [v, want] of bad) t.throws(() => canonicalJson(v), { message: want });
  let deep: unknown = 1;
  for (let i = 0; i < 40; i++) deep = [deep];
  t.throws(() => canonicalJson(deep), { message: /nested deeper than 32 levels/ });
});
