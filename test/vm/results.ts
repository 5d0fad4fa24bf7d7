// The host side of test/vm/selftest.sh's result channel (ttyS1).

/** Parse RAPBOX-RESULT lines from the results log (escapes and kernel noise around them). */
export function parseResults(serial: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of serial.matchAll(/RAPBOX-RESULT ([a-z-]+) ([A-Za-z0-9+/=]*)/g)) {
    out.set(m[1]!, Buffer.from(m[2]!, 'base64').toString('utf8'));
  }
  return out;
}

/**
 * Wait for QEMU to exit (the guest powers off, or reboots under -no-reboot),
 * at most `boundMs`; the VM is killed either way.
 */
export async function waitForExit(vm: { exited: Promise<unknown>; kill(): void }, boundMs: number): Promise<'exited' | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), boundMs)));
  const outcome = await Promise.race([vm.exited.then(() => 'exited' as const), bound]);
  clearTimeout(timer);
  vm.kill();
  return outcome;
}
