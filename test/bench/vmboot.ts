// make bench, part vmboot: boot time of the rapbox image against a bare
// Debian 13 (image/minimal.ts: minbase + systemd-sysv + the same kernel
// package) booted in the same run with the same QEMU flags (OVMF, q35,
// virtio disk and NIC, same memory and CPUs, same accelerator).
//
// Both clocks start at the kernel (systemd's monotonic timestamps count
// from it), so firmware and boot loader are not in either number:
//   rapbox:  kernel start -> rapd.service READY (its ActiveEnter timestamp)
//   minimal: kernel start -> multi-user.target reached
// A probe unit, passed as systemd credentials over SMBIOS (the images stay
// as built), waits for boot to finish, writes the timestamps and
// systemd-analyze's blame to the second serial port, and powers off.

import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { detectAccel, freshVars, startVm, type Accel, type RunningVm } from '../../image/qemu.ts';
import { buildMinimalImage } from '../../image/minimal.ts';
import { parseResults, waitForExit } from '../vm/results.ts';

/**
 * One boot under TCG takes 30-90 s, and over 4 minutes on a 2-core machine
 * that other jobs load to 6x; this bounds a hang, like test/vm's bound.
 */
export const BOOT_BOUND_MS = 8 * 60_000;

const PROBE_UNIT = `[Unit]
Description=make bench boot probe
After=multi-user.target

[Service]
Type=exec
ImportCredential=bench.*
ExecStart=/bin/sh -c 'exec /bin/sh "$CREDENTIALS_DIRECTORY/bench.probe.sh"'
`;

// Same result channel as test/vm/selftest.sh (RAPBOX-RESULT name base64).
const PROBE_SCRIPT = `
out() { printf 'RAPBOX-RESULT %s %s\\n' "$1" "$(printf '%s' "$2" | base64 -w0)" >/dev/ttyS1; }
out state "$(timeout 300 systemctl is-system-running --wait 2>&1)"
out multi-user "$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
out rapd "$(systemctl show -P ActiveEnterTimestampMonotonic rapd.service 2>/dev/null)"
out analyze "$(systemd-analyze 2>&1 | head -2)"
out blame "$(systemd-analyze blame --no-pager 2>&1 | head -12)"
systemctl poweroff --no-block
`;

const vms = new Set<RunningVm>();
/** Kill any VM still running (the bench's global bound calls this). */
export function killVms(): void {
  for (const vm of vms) vm.kill();
}

export interface BootSample {
  /** Kernel start to the probe point, seconds (null if the guest did not report it). */
  multiUserS: number | null;
  rapdReadyS: number | null;
  state: string;
  analyze: string;
  blame: string;
}

/** Monotonic microseconds as systemctl prints them -> seconds; 0 or empty (never reached) -> null. */
export function usToSeconds(text: string | undefined): number | null {
  const v = Number((text ?? '').trim());
  return Number.isFinite(v) && v > 0 ? v / 1e6 : null;
}

async function bootOnce(image: string, work: string, accel: Accel): Promise<BootSample> {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const serial = join(work, 'serial.log');
  const results = join(work, 'results.log');
  writeFileSync(serial, '');
  writeFileSync(results, '');
  const vm = startVm({
    disk: image,
    accel,
    varsFile: freshVars(work),
    serial,
    resultsFile: results,
    credentials: {
      'systemd.extra-unit.bench-probe.service': PROBE_UNIT,
      'systemd.unit-dropin.multi-user.target~bench-probe': '[Unit]\nWants=bench-probe.service\n',
      'bench.probe.sh': PROBE_SCRIPT,
    },
  });
  vms.add(vm);
  try {
    const outcome = await waitForExit(vm, BOOT_BOUND_MS);
    if (outcome === 'timeout') throw new Error(`${image}: no poweroff within ${BOOT_BOUND_MS / 1000} s (console: ${serial})`);
  } finally {
    vm.kill();
    vms.delete(vm);
  }
  const r = parseResults(readFileSync(results, 'latin1'));
  if (!r.has('multi-user')) throw new Error(`${image}: the boot probe reported nothing (console: ${serial}${vm.failure() ? `; qemu: ${vm.failure()}` : ''})`);
  return {
    multiUserS: usToSeconds(r.get('multi-user')),
    rapdReadyS: usToSeconds(r.get('rapd')),
    state: r.get('state') ?? '',
    analyze: r.get('analyze') ?? '',
    blame: r.get('blame') ?? '',
  };
}

export interface VmBootResult {
  accel: Accel;
  rapbox: BootSample;
  minimal: BootSample;
}

/**
 * Boot the minimal image, then rapbox, alternating `runs` times (a loaded
 * machine drifts; alternating spreads that over both), and return the
 * median run of each by its probe point.
 */
export async function measureVmBoot(rapboxImage: string, workRoot: string, runs: number): Promise<{ result: VmBootResult; samples: { rapbox: BootSample[]; minimal: BootSample[] } }> {
  const minimalImage = await buildMinimalImage();
  const accel = await detectAccel(workRoot);
  const samples = { rapbox: [] as BootSample[], minimal: [] as BootSample[] };
  for (let i = 0; i < runs; i++) {
    samples.minimal.push(await bootOnce(minimalImage, join(workRoot, `minimal-${i}`), accel));
    samples.rapbox.push(await bootOnce(rapboxImage, join(workRoot, `rapbox-${i}`), accel));
  }
  const med = (xs: BootSample[], key: 'multiUserS' | 'rapdReadyS'): BootSample => [...xs].sort((a, b) => (a[key] ?? Infinity) - (b[key] ?? Infinity))[Math.floor(xs.length / 2)]!;
  return { result: { accel, rapbox: med(samples.rapbox, 'rapdReadyS'), minimal: med(samples.minimal, 'multiUserS') }, samples };
}
