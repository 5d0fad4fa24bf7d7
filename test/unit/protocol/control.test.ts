import t from 'tap';
import { parseControlRequest } from '../../../src/protocol/control.ts';

t.test('accepts a status request', async (t) => {
  t.same(parseControlRequest('{"method":"status"}'), { method: 'status' });
});

const bad: [string, RegExp][] = [
  ['not json', /not valid JSON/],
  ['[]', /must be a JSON object/],
  ['{}', /no string 'method'/],
  ['{"method":"reboot"}', /unknown method "reboot" \(known: status, audit\.read, audit\.verify\)/],
  ['{"method":"status","x":1}', /unknown request field\(s\): x/],
];
for (const [line, want] of bad) {
  t.test(`rejects ${line}`, async (t) => {
    t.throws(() => parseControlRequest(line), { message: want });
  });
}
