// Boots out/rapbox.img under QEMU with UEFI (OVMF) and systemd-boot, for
// people (`make qemu`: serial console on the terminal) and for test/vm
// (serial console to a file, read by the test).
//
// Guest networking is QEMU user-mode only. KVM is used when it actually
// works; on some machines /dev/kvm exists but QEMU asserts or hangs on it, so
// a short probe decides, and TCG (software) is the fallback.

import { copyFileSync, existsSync, mkdirSync, openSync, readFileSync, closeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../src/lib/run.ts';
import { OUT, stage } from './tools.ts';

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';

export type Accel = 'kvm' | 'tcg';

export interface VmOptions {
  disk: string;
  accel: Accel;
  varsFile: string;
  /** Serial console: a file path, or 'stdio' for a person at the terminal. */
  serial: string;
  memoryMiB?: number;
  cpus?: number;
  /** systemd credentials passed through SMBIOS type 11 (name -> content). */
  credentials?: Record<string, string>;
  /** Writes go to a temporary overlay; the image file is never changed. */
  snapshot?: boolean;
  /** raw (default) or qcow2 (an overlay made by overlayDisk). */
  diskFormat?: 'raw' | 'qcow2';
  /**
   * Guest connections to a virtual address forwarded to a host loopback
   * port, e.g. a rap-center run by a test:
   * { guest: '10.0.2.100:443', host: '127.0.0.1:40123' }.
   * QEMU's guestfwd with a chardev target is one stream for the VM's whole
   * life; the cmd: form runs socat once per guest connection instead.
   */
  forwards?: { guest: string; host: string }[];
  /** A second serial port (ttyS1 in the guest) to a file: a clean channel for test results. */
  resultsFile?: string;
  /**
   * Host tap devices (made by the caller) for the instrument ports, in order:
   * the first becomes inst1 in the guest, and so on.
   */
  instrumentTaps?: string[];
}

/**
 * PCI slots of the NICs, as on the reference box: the image's .link files
 * name ports by these paths (rootfs-overlay/usr/lib/systemd/network/10-rapbox-*.link).
 */
export const WAN_PCI_SLOT = 0x10;
export const MAX_INSTRUMENT_PORTS = 4;

/** The QEMU argv for a VM (pure; unit-tested). */
export function qemuArgv(o: VmOptions): string[] {
  const argv = ['qemu-system-x86_64', '-machine', 'q35', '-m', String(o.memoryMiB ?? 1024), '-smp', String(o.cpus ?? 2)];
  if (o.accel === 'kvm') argv.push('-accel', 'kvm', '-cpu', 'host');
  else argv.push('-accel', 'tcg,thread=multi', '-cpu', 'max');
  argv.push(
    '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`,
    '-drive', `if=pflash,format=raw,file=${o.varsFile}`,
    '-drive', `file=${o.disk},format=${o.diskFormat ?? 'raw'},if=virtio${o.snapshot === false ? '' : ',snapshot=on'}`,
    // restrict=on: the guest reaches no host or outside address, only the
    // forwards listed explicitly.
    '-netdev', ['user', 'id=wan', 'restrict=on', ...(o.forwards ?? []).map((f) => `guestfwd=tcp:${f.guest}-cmd:socat STDIO TCP:${f.host}`)].join(','),
    '-device', `virtio-net-pci,netdev=wan,addr=0x${WAN_PCI_SLOT.toString(16)}`,
    '-no-reboot',
  );
  const taps = o.instrumentTaps ?? [];
  if (taps.length > MAX_INSTRUMENT_PORTS) throw new Error(`at most ${MAX_INSTRUMENT_PORTS} instrument ports, got ${taps.length}`);
  taps.forEach((tap, i) => {
    argv.push(
      '-netdev', `tap,id=inst${i + 1},ifname=${tap},script=no,downscript=no`,
      '-device', `virtio-net-pci,netdev=inst${i + 1},addr=0x${(WAN_PCI_SLOT + 1 + i).toString(16)}`,
    );
  });
  if (o.serial === 'stdio') argv.push('-nographic');
  else argv.push('-display', 'none', '-serial', `file:${o.serial}`, '-monitor', 'none');
  if (o.resultsFile) argv.push('-serial', `file:${o.resultsFile}`);
  for (const [name, content] of Object.entries(o.credentials ?? {})) {
    // Base64 avoids QEMU's comma escaping and keeps newlines intact.
    argv.push('-smbios', `type=11,value=io.systemd.credential.binary:${name}=${Buffer.from(content).toString('base64')}`);
  }
  return argv;
}

/**
 * A throwaway qcow2 overlay on the (unchanged) raw image, with a larger
 * virtual size: the VM sees a bigger SSD than the image, as a real box does.
 */
export async function overlayDisk(image: string, path: string, sizeBytes: number): Promise<string> {
  await run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image, path, String(sizeBytes)]);
  return path;
}

/** A writable copy of the UEFI variable store for one VM. */
export function freshVars(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const vars = join(dir, 'OVMF_VARS.fd');
  copyFileSync(OVMF_VARS, vars);
  return vars;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/**
 * Does KVM work here? Start OVMF under KVM and wait (bounded) for the
 * firmware to print on the serial port. Cached per host boot.
 */
export async function detectAccel(workDir: string): Promise<Accel> {
  const forced = process.env['RAPBOX_ACCEL'];
  if (forced === 'kvm' || forced === 'tcg') return forced;
  if (!existsSync('/dev/kvm')) return 'tcg';
  const cache = join(OUT, 'build', 'accel.json');
  try {
    const c = JSON.parse(readFileSync(cache, 'utf8')) as { bootId: string; accel: Accel };
    if (c.bootId === bootId()) return c.accel;
  } catch {
    // no cache yet
  }
  mkdirSync(workDir, { recursive: true });
  const log = join(workDir, 'kvm-probe.log');
  closeSync(openSync(log, 'w'));
  const argv = qemuArgv({ disk: '/dev/null', accel: 'kvm', varsFile: freshVars(workDir), serial: log, memoryMiB: 256, cpus: 1 });
  const stop = new AbortController();
  let exited = false;
  const probe = run(argv, { stdio: 'ignore', signal: stop.signal, timeoutMs: 30_000 }).then(
    () => void (exited = true),
    () => void (exited = true),
  );
  let ok = false;
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && !exited) {
    await new Promise((r) => setTimeout(r, 250));
    // OVMF prints its boot manager messages on the serial port within seconds.
    if (readFileSync(log).length > 0) {
      ok = true;
      break;
    }
  }
  stop.abort();
  await probe;
  const accel: Accel = ok ? 'kvm' : 'tcg';
  mkdirSync(join(OUT, 'build'), { recursive: true });
  writeFileSync(cache, JSON.stringify({ bootId: bootId(), accel }));
  return accel;
}

export interface RunningVm {
  argv: string[];
  /** Resolves with QEMU's exit code, or null when it was killed or failed to start. */
  exited: Promise<number | null>;
  /** Stderr tail when QEMU failed (for test messages). */
  failure(): string | null;
  kill(): void;
}

/** Start QEMU through the one subprocess door; kill() aborts it (SIGKILL). */
export function startVm(o: VmOptions): RunningVm {
  const argv = qemuArgv(o);
  const stop = new AbortController();
  let failure: string | null = null;
  const exited = run(argv, { stdio: o.serial === 'stdio' ? 'inherit' : 'ignore', signal: stop.signal }).then(
    (r) => r.code,
    (e: unknown) => {
      failure = e instanceof Error ? e.message : String(e);
      return null;
    },
  );
  return {
    argv,
    exited,
    failure: () => failure,
    kill: () => stop.abort(),
  };
}

// A person's console: the box's serial port on this terminal. Login needs a
// password the image does not have, so `make qemu` passes a systemd
// credential (only honoured inside a VM) that logs root in on ttyS0.
const DEV_AUTOLOGIN = `[Service]
ExecStart=
ExecStart=-/sbin/agetty --noclear --autologin root --keep-baud 115200,57600,38400,9600 - $TERM
`;

async function main(): Promise<void> {
  const disk = process.argv[2] ?? join(OUT, 'rapbox.img');
  if (!existsSync(disk)) throw new Error(`${disk} not found: run make image first`);
  const work = join(OUT, 'qemu');
  const accel = await detectAccel(work);
  stage(`qemu: booting ${disk} (${accel}); quit with Ctrl-a x; changes are discarded`);
  const vm = startVm({
    disk,
    accel,
    varsFile: freshVars(work),
    serial: 'stdio',
    credentials: { 'systemd.unit-dropin.serial-getty@ttyS0.service~rapbox-dev-autologin': DEV_AUTOLOGIN },
  });
  process.exitCode = (await vm.exited) ?? 1;
}

if (import.meta.main) {
  main().catch((e: unknown) => {
    process.stderr.write(`make qemu: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
