// The one canonical encoding of JSON values that rapbox hashes and signs
// (audit records, signed commands). Both ends must produce the same bytes for
// the same value, whatever order the fields arrived in:
//
//   - objects: keys sorted by UTF-16 code units (JavaScript's default sort,
//     which is also RFC 8785's order), no whitespace, `"key":value` joined by ",";
//   - arrays: elements in order, joined by ",";
//   - strings: JSON.stringify (ECMAScript's escaping: only `"`, `\`, control
//     characters and lone surrogates are escaped);
//   - numbers: finite only, JSON.stringify's shortest round-trip form (the
//     ECMAScript Number::toString that RFC 8785 also uses); -0 is written 0;
//   - true, false, null as themselves;
//   - anything else (undefined, functions, bigint, NaN, Infinity, a value
//     nested deeper than MAX_DEPTH) is refused with the path that holds it:
//     a value that cannot be encoded must not be signed as something else.
//
// This is RFC 8785 (JCS) for every value rapbox produces; it is UTF-8 encoded
// before hashing or signing.

export const MAX_DEPTH = 32;

export class CanonicalError extends Error {}

export function canonicalJson(value: unknown, path = '$', depth = 0): string {
  if (depth > MAX_DEPTH) throw new CanonicalError(`${path}: nested deeper than ${MAX_DEPTH} levels`);
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'string':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new CanonicalError(`${path}: ${String(value)} is not a finite number`);
      return JSON.stringify(value === 0 ? 0 : value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map((v, i) => canonicalJson(v, `${path}[${i}]`, depth + 1)).join(',')}]`;
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) throw new CanonicalError(`${path}: not a plain object`);
      const obj = value as Record<string, unknown>;
      const parts: string[] = [];
      for (const k of Object.keys(obj).sort()) {
        // An undefined member is absent in JSON; encoding it as anything would not round-trip.
        if (obj[k] === undefined) throw new CanonicalError(`${path}.${k}: undefined`);
        parts.push(`${JSON.stringify(k)}:${canonicalJson(obj[k], `${path}.${k}`, depth + 1)}`);
      }
      return `{${parts.join(',')}}`;
    }
    default:
      throw new CanonicalError(`${path}: a ${typeof value} cannot be encoded`);
  }
}
