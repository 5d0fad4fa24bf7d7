#!/bin/sh
# Runs inside the booted image (injected by test/vm as a systemd credential;
# the image does not ship it). Waits, bounded, for boot to finish, then writes
# raw facts to the second serial port (ttyS1: no console, no getty on it),
# one per line as
#   RAPBOX-RESULT <name> <base64 of the output>
# so the host can assert on them, and powers off.
# No assertions here: the host decides what is right.

results=/dev/ttyS1
out() { printf 'RAPBOX-RESULT %s %s\n' "$1" "$(printf '%s' "$2" | base64 -w0)" >"$results"; }
cred="$CREDENTIALS_DIRECTORY"

printf 'RAPBOX-SELFTEST-BEGIN\n' >"$results"
echo 'rapbox self-test: running' >/dev/console
state=$(timeout 240 systemctl is-system-running --wait 2>&1)
out system-state "$state"
out failed-units "$(systemctl --failed --plain --no-legend 2>&1)"
out rapd-show "$(systemctl show rapd.service -p ActiveState -p SubState -p StatusText -p Type -p NRestarts -p MainPID -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic 2>&1)"
out rapctl-json "$(timeout 20 rapctl status --json 2>&1)"
out rapctl-text "$(timeout 20 rapctl status 2>&1)"
pid=$(systemctl show rapd.service -p MainPID --value)
out rapd-proc-status "$(cat /proc/"$pid"/status 2>&1)"
out rapd-socket "$(stat -c '%a %U %F %n' /run/rapd /run/rapd/rapd.sock 2>&1)"
out mounts "$(findmnt -rn -o TARGET,SOURCE,FSTYPE,OPTIONS 2>&1)"
out verity "$(veritysetup status root 2>&1)"
out machine-id "$(cat /etc/machine-id 2>&1)"
out machine-id-mount "$(findmnt -rn -o TARGET,SOURCE /etc/machine-id 2>&1)"
out boots "$(journalctl --list-boots --no-pager 2>&1)"
# Persistence across reboots: report the marker a previous boot left on the
# data partition, then leave this boot's (from a credential) for the next.
marker=/var/lib/rapbox-selftest/marker
out marker-found "$(cat "$marker" 2>/dev/null)"
if [ -f "$cred/rapbox.marker" ]; then
  mkdir -p "${marker%/*}" && cp "$cred/rapbox.marker" "$marker" && sync
fi
out var-size "$(df -B1 --output=size /var | tail -1)"
out cmdline "$(cat /proc/cmdline)"
out analyze "$(systemd-analyze 2>&1 | head -1)"
out rapd-journal "$(journalctl -u rapd.service -b --no-pager -o cat 2>&1 | tail -20)"

# Telemetry through the real image: provision the box the way a field
# engineer would (site config and PKI on the data partition), restart rapd,
# let the reference instrument send, and wait (bounded) until the uplink has
# delivered everything to the rap-center the test runs on the host.
if [ -f "$cred/rapbox.telemetry.config" ]; then
  install -m 0600 "$cred/rapbox.telemetry.ca" /var/lib/rapd/pki/center-ca.pem
  install -m 0600 "$cred/rapbox.telemetry.cert" /var/lib/rapd/pki/device.pem
  install -m 0600 "$cred/rapbox.telemetry.key" /var/lib/rapd/pki/device.key
  install -m 0600 "$cred/rapbox.telemetry.config" /var/lib/rapd/rapd.json
  systemctl restart rapd.service
  out telemetry-restart "$(systemctl is-active rapd.service 2>&1)"
  out telemetry-sim "$(timeout 120 rapctl instrument-sim --connect 127.0.0.1:7400 --serial SN-VM-1 --model DxH-900 --count 50 --alarm-ratio 0.1 --json 2>&1)"
  # Bounded by the clock: under TCG one rapctl call takes seconds.
  deadline=$(( $(date +%s) + 90 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    s=$(timeout 20 rapctl status --json 2>/dev/null)
    n=$(printf '%s' "$s" | grep -o '"sentMessages": [0-9]*' | grep -o '[0-9]*$')
    [ "${n:-0}" -ge 50 ] && break
    sleep 2
  done
  out telemetry-status "$(timeout 20 rapctl status --json 2>&1)"
  out telemetry-journal "$(journalctl -u rapd.service -b --no-pager -o cat 2>&1 | tail -30)"
fi

# Instrument ports: the host test drives instruments in network namespaces
# behind the box's instrument NICs. Wait (bounded) until the instrument on
# each named port has said goodbye (the host finishes with the last port,
# after all its probes), then report what the ports, the firewall and the
# WAN look like from inside.
if [ -f "$cred/rapbox.wait-ports" ]; then
  deadline=$(( $(date +%s) + 420 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    log=$(journalctl -u rapd.service -b --no-pager -o cat 2>/dev/null)
    ok=1
    for p in $(cat "$cred/rapbox.wait-ports"); do
      printf '%s' "$log" | grep -qF "\"msg\":\"instrument-bye\",\"port\":\"$p\"" || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 3
  done
  out ports-status "$(timeout 20 rapctl status --json 2>&1)"
  out ip-addr "$(ip -br addr 2>&1)"
  out networkctl "$(networkctl list --no-pager 2>&1)"
  out nft "$(nft list ruleset 2>&1)"
  out ip-forward "$(cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/inst1/forwarding 2>&1)"
  # The WAN side the instruments must not reach is reachable from the box itself.
  out box-to-wan "$(timeout 10 bash -c 'exec 3<>/dev/tcp/10.0.2.100/443 && head -c 64 <&3' 2>&1)"
  out networkd-journal "$(journalctl -u systemd-networkd.service -b --no-pager -o cat 2>&1 | tail -30)"
  out rapd-journal-ports "$(journalctl -u rapd.service -b --no-pager -o cat 2>&1 | tail -30)"
fi

# Provisioning (test/vm/provision.test.ts): the factory bundle on the data
# partition was consumed (or, on a later boot, skipped) before rapd started;
# report what it left and how the WAN came up, send a few instrument messages
# through a loopback port to the center and wait (bounded) for the uplink.
if [ -f "$cred/rapbox.provision-report" ]; then
  out prov-unit "$(systemctl show rapbox-provision.service -p ActiveState -p Result -p ExecMainStatus -p ConditionResult 2>&1)"
  out prov-journal "$(journalctl -u rapbox-provision.service -b --no-pager -o cat 2>&1 | tail -20)"
  out prov-files "$(stat -c '%a %U %n' /var/lib/rapbox/provision.applied /var/lib/rapbox/provision.applied/* /var/lib/rapd/rapd.json /var/lib/rapd/pki /var/lib/rapd/pki/* 2>&1)"
  out prov-pending "$(ls -d /var/lib/rapbox/provision /var/lib/rapbox/provision.rejected 2>&1)"
  out prov-config "$(cat /var/lib/rapd/rapd.json 2>&1)"
  out wan-addr "$(ip -4 -o addr show dev wan 2>&1)"
  out wan-route "$(ip -4 route show default 2>&1)"
  out wan-dns "$(resolvectl dns wan 2>&1)"
  out wan-ntp "$(timedatectl show-timesync -p SystemNTPServers -p LinkNTPServers 2>&1)"
  out wan-networkd "$(ls /run/systemd/network /run/systemd/timesyncd.conf.d 2>&1; networkctl status wan --no-pager 2>&1 | head -25)"
  if [ -f "$cred/rapbox.provision-sim" ]; then
    out prov-sim "$(timeout 120 rapctl instrument-sim --connect 127.0.0.1:7401 --serial SN-PROV-1 --model DxH-900 --count 5 --json 2>&1)"
    deadline=$(( $(date +%s) + 90 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
      n=$(timeout 20 rapctl status --json 2>/dev/null | grep -o '"sentMessages": [0-9]*' | grep -o '[0-9]*$')
      [ "${n:-0}" -ge 5 ] && break
      sleep 2
    done
  fi
  out prov-status "$(timeout 20 rapctl status --json 2>&1)"
  out prov-rapd-journal "$(journalctl -u rapd.service -b --no-pager -o cat 2>&1 | tail -30)"
  # A site change after provisioning, which a later boot must keep.
  if [ -f "$cred/rapbox.provision-edit" ]; then
    sed -i "s/$(cat "$cred/rapbox.provision-edit")/&-edited/" /var/lib/rapd/rapd.json && sync
  fi
fi

printf 'RAPBOX-SELFTEST-END\n' >"$results"
echo 'rapbox self-test: done, powering off' >/dev/console
systemctl poweroff --no-block
