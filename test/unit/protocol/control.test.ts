import t from 'tap';
import { parseControlRequest } from '../../../src/protocol/control.ts';

t.test('accepts a status request', async (t) => {
  t.same(parseControlRequest('{"method":"status"}'), { method: 'status' });
});

t.test('session requests carry their args (checked by the session manager)', async (t) => {
  t.same(parseControlRequest('{"method":"session-open","args":{"port":"p1","services":[5900]}}'), { method: 'session-open', args: { port: 'p1', services: [5900] } });
  t.same(parseControlRequest('{"method":"session-close","args":{"sessionId":"abc"}}'), { method: 'session-close', args: { sessionId: 'abc' } });
  t.same(parseControlRequest('{"method":"sessions"}'), { method: 'sessions' });
});

const bad: [string, RegExp][] = [
  ['not json', /not valid JSON/],
  ['[]', /must be a JSON object/],
  ['{}', /no string 'method'/],
  ['{"method":"reboot"}', /unknown method "reboot" \(known: status, audit\.read, audit\.verify, sessions, session-open, session-close\)/],
  ['{"method":"status","x":1}', /unknown request field\(s\): x/],
  ['{"method":"status","args":{}}', /unknown request field\(s\): args/],
  ['{"method":"session-open"}', /session-open: 'args' must be a JSON object/],
  ['{"method":"session-close","args":{"sessionId":3}}', /session-close: 'args.sessionId' must be a session id/],
];
for (const [line, want] of bad) {
  t.test(`rejects ${line}`, async (t) => {
    t.throws(() => parseControlRequest(line), { message: want });
  });
}
