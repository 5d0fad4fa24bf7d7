// Message bodies for make bench.
//
// The instrument simulator (src/sim/simulator.ts) pads a status frame to its
// size with one repeated character ('x'.repeat(n)), which gzip squeezes to
// almost nothing: wire bytes measured with it flatter the uplink. This file
// makes a "realistic" status body instead: the kind of ~1 KB snapshot a
// clinical analyser reports (temperatures, pressures, voltages with sensor
// noise, counters that move, reagent lots, QC results, recent errors), with
// stable field names and stable strings (so gzip can use its window, as it
// would with real traffic) and noisy numbers (which it cannot squeeze).
// Deterministic: a seeded PRNG, so runs compare.

/** mulberry32: small, fast, seeded. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const REAGENTS = [
  { name: 'diluent', lot: 'DL24A0917' },
  { name: 'lyse-wbc', lot: 'LW24B1133' },
  { name: 'lyse-hgb', lot: 'LH24A0452' },
  { name: 'cleaner', lot: 'CL24C0208' },
];
const STATES = ['running', 'running', 'running', 'running', 'running', 'running', 'standby', 'qc', 'maintenance', 'running'];
const ERRORS = ['E1023', 'E1041', 'W2210', 'W2301', 'E3007', 'W2450'];

export interface StatusGen {
  /** The i-th status body of this instrument (i increases by one per message). */
  body(i: number, now: number): Record<string, unknown>;
}

/** A status body generator for one instrument; `seed` tells instruments apart. */
export function realisticStatus(seed: number): StatusGen {
  const r = prng(seed);
  const noise = (centre: number, spread: number, decimals: number): number => Number((centre + (r() * 2 - 1) * spread).toFixed(decimals));
  const base = { samples: 20_000 + Math.floor(r() * 50_000), lamp: 1000 + Math.floor(r() * 3000), boot: Date.now() - Math.floor(r() * 9e8) };
  const remaining = REAGENTS.map(() => 200 + Math.floor(r() * 2000));
  return {
    body(i, now) {
      const samples = base.samples + i;
      for (let k = 0; k < remaining.length; k++) if (r() < 0.3) remaining[k] = Math.max(0, remaining[k]! - 1);
      const iso = (ms: number): string => new Date(ms).toISOString();
      return {
        seq: i,
        state: STATES[Math.floor(r() * STATES.length)],
        mode: 'routine',
        uptimeSec: Math.floor((now - base.boot) / 1000),
        samplesToday: i % 1500,
        testsTotal: samples * 3 + Math.floor(r() * 3),
        queue: { pending: Math.floor(r() * 40), stat: Math.floor(r() * 3), rerun: Math.floor(r() * 2) },
        temperatureC: {
          incubator: noise(37, 0.08, 2),
          reagentCooler: noise(8, 0.4, 2),
          optics: noise(30, 0.3, 2),
          ambient: noise(22.5, 1.5, 1),
          cpu: noise(55, 6, 1),
        },
        pressureKPa: { vacuum: noise(-60, 1.2, 2), pneumatic: noise(150, 2.5, 2) },
        voltageV: { psu5: noise(5.02, 0.03, 3), psu24: noise(24.1, 0.1, 3) },
        lamp: { hours: base.lamp + Math.floor(i / 3600), intensityPct: noise(94, 1.5, 1) },
        reagents: REAGENTS.map((g, k) => ({ name: g.name, lot: g.lot, remainingTests: remaining[k] })),
        qc: {
          lastRunAt: iso(now - Math.floor(r() * 3600_000)),
          level1: { result: 'pass', wbc: noise(4.1, 0.15, 2), hgb: noise(6.2, 0.1, 2) },
          level2: { result: 'pass', wbc: noise(8.2, 0.2, 2), hgb: noise(12.4, 0.15, 2) },
        },
        counters: {
          aspirations: samples * 2 + Math.floor(r() * 2),
          washes: samples + 17,
          clots: Math.floor(samples / 900),
          bubbles: Math.floor(samples / 1400),
          shortSample: Math.floor(samples / 2200),
        },
        lastError: { code: ERRORS[i % ERRORS.length], at: iso(now - Math.floor(r() * 86400_000)), count: 1 + Math.floor(r() * 5) },
        operator: `tech-${String(1 + Math.floor(r() * 12)).padStart(2, '0')}`,
      };
    },
  };
}
