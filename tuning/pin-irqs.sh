#!/usr/bin/env bash
# pin-irqs.sh — put a NIC's queue interrupts on the CPUs that run avlgate's shards.
#
#   tuning/pin-irqs.sh [--apply] NIC SHARDS
#
# `avlgate run --shards S --pin` runs shard i on CPU i (0 .. S-1), pinned: each shard's ring,
# connections and row ring stay in one CPU's caches. Without --pin the scheduler moves shards
# and no interrupt placement can follow them. Keep other busy work off those CPUs (systemd
# CPUAffinity= for other services).
#
# This script finds NIC's MSI/MSI-X interrupts (/sys/class/net/NIC/device/msi_irqs, or the
# PCI parent's for a virtio NIC), names them from /proc/interrupts, and maps queue q to CPU
# q mod S, so every queue's hard interrupt and softirq (the TCP receive work) runs on a shard
# CPU, never on another service's core. Vectors that are not queues (config, async, misc,
# mgmnt, ...) are left alone. By default it only prints the commands (a shell script to read
# and run); --apply writes /proc/irq/N/smp_affinity_list itself (root).
#
# One queue per shard is best: `ethtool -l NIC` shows the channels, `ethtool -L NIC combined
# S` sets them where the driver allows (the link resets). Notes on RPS, RFS and XPS follow the
# plan in the output; they are printed, never applied.
set -euo pipefail

die() {
  echo "pin-irqs: $*" >&2
  exit 2
}

usage() {
  echo "usage: pin-irqs.sh [--apply] NIC SHARDS   (dry run unless --apply)"
}

apply=0
args=()
for a in "$@"; do
  case "$a" in
  --apply) apply=1 ;;
  -h | --help)
    usage
    exit 0
    ;;
  -*) die "unknown option $a ($(usage))" ;;
  *) args+=("$a") ;;
  esac
done
[ ${#args[@]} -eq 2 ] || die "$(usage)"
nic=${args[0]} shards=${args[1]}

[[ $nic =~ ^[A-Za-z0-9_.:@-]+$ ]] || die "bad NIC name: $nic"
[ -d "/sys/class/net/$nic" ] || die "no network interface $nic (ls /sys/class/net)"
[[ $shards =~ ^[1-9][0-9]*$ ]] || die "SHARDS must be a positive integer, not $shards"
for ((cpu = 0; cpu < shards; cpu++)); do
  [ -d "/sys/devices/system/cpu/cpu$cpu" ] || die "no CPU $cpu: --pin puts shard $cpu there"
  online=/sys/devices/system/cpu/cpu$cpu/online # cpu0 often has no such file: always online
  if [ -f "$online" ] && [ "$(cat "$online")" != 1 ]; then
    die "CPU $cpu is offline"
  fi
done
if [ "$apply" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  die "--apply writes /proc/irq/*/smp_affinity_list: run it as root"
fi

# The MSI vectors of the device; a virtio NIC's live on its PCI parent.
dev=$(readlink -f "/sys/class/net/$nic/device" 2>/dev/null || true)
irqdir=
for d in "$dev/msi_irqs" "$dev/../msi_irqs"; do
  if [ -n "$dev" ] && [ -d "$d" ]; then
    irqdir=$d
    break
  fi
done
if [ -z "$irqdir" ]; then
  echo "# $nic has no MSI interrupts (virtual device: lo, veth, bridge, bond, ...)."
  echo "# For a bond or VLAN, run this for each physical NIC under it."
  exit 0
fi

# Queue index of an interrupt name, or nothing for a vector that is not a queue. The NIC's
# own name and a trailing "@pci:..." are removed first ("eth0" is ixgbe's link vector, not
# queue 0). Examples: eth0-TxRx-3 -> 3, mlx5_comp3@pci:0000:3b:00.0 -> 3,
# virtio2-input.1 and virtio2-output.1 -> 1, i40e-eth0-TxRx-5 -> 5, ena-mgmnt@pci:... -> -.
queue_of() {
  local name=${1%%@*}
  name=${name//"$nic"/}
  shopt -s nocasematch
  if [[ $name =~ (config|async|misc|mgmnt|mgmt|ctrl|link|lsc|mbx|other|event|fw) ]]; then
    shopt -u nocasematch
    return 0
  fi
  shopt -u nocasematch
  if [[ $name =~ ([0-9]+)$ ]]; then
    echo "${BASH_REMATCH[1]}"
  elif [[ $name =~ (input|output|rx|tx)$ ]]; then
    echo 0 # a single-queue virtio NIC: "virtio3-rx", "virtio3-tx"
  fi
}

mapfile -t irqs < <(find "$irqdir" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n)
planned=0 failed=0
echo "# $nic: ${#irqs[@]} MSI vectors ($irqdir); shards 0..$((shards - 1)) on CPUs 0..$((shards - 1))"
for irq in "${irqs[@]}"; do
  name=$(awk -v irq="$irq:" '$1 == irq { print $NF }' /proc/interrupts)
  now=$(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo "?")
  q=$(queue_of "$name")
  if [ -z "$q" ]; then
    echo "# IRQ $irq ($name): not a queue, left on CPUs $now"
    continue
  fi
  cpu=$((q % shards))
  planned=$((planned + 1))
  if [ "$now" = "$cpu" ]; then
    echo "# IRQ $irq ($name): queue $q already on CPU $cpu"
    continue
  fi
  echo "echo $cpu > /proc/irq/$irq/smp_affinity_list   # $name: queue $q, now CPUs $now"
  if [ "$apply" = 1 ]; then
    # A kernel-managed vector (the driver spreads it itself) refuses with EIO; go on.
    if ! echo "$cpu" 2>/dev/null >"/proc/irq/$irq/smp_affinity_list"; then
      echo "pin-irqs: IRQ $irq ($name): the kernel refused (managed interrupt?)" >&2
      failed=$((failed + 1))
    fi
  fi
done

# A CPU mask as /sys wants it: hex, 32-bit words separated by commas, most significant
# first. Arguments: the CPU numbers.
cpumask() {
  local -a words=()
  local c w i top=0 out=
  for c in "$@"; do
    w=$((c / 32))
    words[w]=$((${words[w]:-0} | (1 << (c % 32))))
    top=$((w > top ? w : top))
  done
  for ((i = top; i >= 0; i--)); do
    if [ -z "$out" ]; then
      out=$(printf '%x' "${words[i]:-0}")
    else
      out+=,$(printf '%08x' "${words[i]:-0}")
    fi
  done
  echo "$out"
}

rxq=$(find "/sys/class/net/$nic/queues" -maxdepth 1 -name 'rx-*' | wc -l)
txq=$(find "/sys/class/net/$nic/queues" -maxdepth 1 -name 'tx-*' | wc -l)
mapfile -t shard_cpus < <(seq 0 $((shards - 1)))
echo "#"
echo "# $planned queue vectors, $rxq rx and $txq tx queues, $shards shards."
if [ "$planned" -lt "$shards" ]; then
  echo "# Fewer queues than shards: CPUs $planned..$((shards - 1)) take no NIC interrupt; RFS below"
  echo "# moves the TCP work of their connections to them."
fi
cat <<EOF
#
# irqbalance, if it runs, rewrites affinities every 10 s: stop it, or exclude these vectors
# (IRQBALANCE_ARGS="--banirq=N ..." in /etc/default/irqbalance). Affinities do not survive a
# reboot or a driver reload: run this from whatever starts avlgate.
#
# RFS (receive flow steering), worth it with avlgate: the NIC's RSS hash picks a connection's
# queue, but its owner shard is picked later by the IMEI hash (the connection moves there
# after the handshake), so the softirq usually runs on another shard's CPU. RFS moves the TCP
# receive work to the CPU that last read the socket, which is the owner shard's:
#   sysctl -w net.core.rps_sock_flow_entries=131072
#   for q in /sys/class/net/$nic/queues/rx-*; do echo $((131072 / (rxq > 0 ? rxq : 1))) > \$q/rps_flow_cnt; done
#   for q in /sys/class/net/$nic/queues/rx-*; do echo $(cpumask "${shard_cpus[@]}") > \$q/rps_cpus; done
# (rps_cpus: the shard CPUs; RPS/RFS hand packets across CPUs through a per-CPU backlog of
# net.core.netdev_max_backlog packets.) A NIC with accelerated RFS (ethtool -K $nic ntuple
# on) steers in hardware instead, without that hop.
#
# XPS (transmit queue per CPU): many drivers already map tx-N to CPU N (cat
# /sys/class/net/$nic/queues/tx-*/xps_cpus). If not, give each shard CPU its own queue so ACKs
# sent by different shards never share a queue lock:
EOF
for ((i = 0; i < shards && i < txq; i++)); do
  echo "#   echo $(cpumask "$i") > /sys/class/net/$nic/queues/tx-$i/xps_cpus"
done
if [ "$apply" = 0 ]; then
  echo "# dry run: nothing changed (--apply writes the echo lines above that are not comments)"
fi
[ "$failed" -eq 0 ] || exit 1
