// The shape of a benchmark row in out/bench*.json, shared by the benchmarks.

export type Better = 'higher' | 'lower';

/** ratio = value/ceiling when higher is better, ceiling/value when lower is better; null without a ceiling. */
export interface Row {
  name: string;
  value: number | null;
  unit: string;
  ceiling: number | null;
  ratio: number | null;
  better: Better;
  target: string | null;
  note?: string;
}
