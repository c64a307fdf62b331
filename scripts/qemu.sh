#!/usr/bin/env bash
# scripts/qemu.sh — launch the virtio-nn guest (q35, TCG by default).
#
# Usage: scripts/qemu.sh [options] [-- extra QEMU args]
#   --socket PATH        vhost-user socket of the daemon (the daemon must be
#                        listening already). Without it the guest boots
#                        without the device (it can be hot-plugged later, see
#                        below).
#   --queues N           request queues of the device (default 1); QEMU's
#                        num_vqs is N + 1: the event queue follows them
#   --config-size N      config space size in bytes (default 72:
#                        protocol::CONFIG_SIZE, nn-core/src/protocol.rs;
#                        nn-core's tests/interfaces.rs checks the two agree)
#   --vq-size N          virtqueue size (default: QEMU's, 64)
#   --mem SIZE           guest RAM (default 512M)
#   --smp N              vCPUs (default 1)
#   --kvm                use KVM (-accel kvm -cpu host); default is TCG
#   --serial stdio|unix:PATH|file:PATH
#                        guest console (ttyS0). stdio (default); unix:PATH =
#                        QEMU listens on PATH and WAITS for one client before
#                        starting (so no output is lost); file:PATH = write only.
#   --qmp PATH           QMP unix socket (QEMU listens, does not wait)
#   --append "ARGS"      extra kernel command line (e.g. "nn.modules=" to
#                        load no module at boot, "loglevel=7")
#   --kernel FILE        default $KERNEL_IMAGE
#   --initrd FILE        default $INITRAMFS
#   --dry-run            print the command instead of running it
#   --print-device       print the -device value of the virtio-nn device
#                        (driver,prop=value,...) for --queues/--config-size/
#                        --vq-size and exit: what a QMP device_add must pass
#                        (tests/avocado/nnlib.py builds its device_add from it)
#   -- ARGS...           passed to QEMU unchanged (e.g. -- -S)
#
# QEMU is exec'd: the caller's PID is QEMU's PID. The guest ends with
# `reboot -f` (or a panic): -no-reboot makes QEMU exit.
#
# Topology: the device sits on a PCIe root port (id rp0, always present) so it
# can be hot-unplugged/replugged over QMP for a daemon restart:
#   {"execute":"device_del","arguments":{"id":"nn0dev"}}
#       -> wait for the DEVICE_DELETED event whose data.device is "nn0dev"
#          (one for the .../virtio-backend child comes first); takes ~6 s:
#          the guest's pciehp waits 5 s after the attention button
#   {"execute":"chardev-remove","arguments":{"id":"nn0"}}
#   ... restart the daemon ...
#   {"execute":"chardev-add","arguments":{"id":"nn0","backend":{"type":"socket",
#       "data":{"addr":{"type":"unix","data":{"path":"PATH"}},"server":false}}}}
#   {"execute":"device_add","arguments":{...}}   with the properties that
#       `scripts/qemu.sh --print-device --queues N` prints
#       (vhost-user-test-device-pci,id=nn0dev,bus=rp0,chardev=nn0,virtio-id=...)
# ACPI PCI hotplug is switched off so the root port exposes native PCIe
# hotplug, which the guest kernel (no ACPI) handles with pciehp.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# virtio device id: an assigned id that no Linux driver claims and that QEMU
# knows a name for (38 = "parameter server"). Its definition is
# protocol::VIRTIO_ID_NN (nn-core/src/protocol.rs); nn-core's
# tests/interfaces.rs runs --print-device and compares.
VIRTIO_NN_DEVICE_ID=38

socket="" queues=1 config_size=72 vq_size="" mem=512M smp=1 kvm=0
serial=stdio qmp="" append_extra="" dry_run=0 print_device=0
kernel="$KERNEL_IMAGE" initrd="$INITRAMFS"
extra=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while (($#)); do
    case "$1" in
        --socket)      need "$@"; socket="$2"; shift 2 ;;
        --queues)      need "$@"; queues="$2"; shift 2 ;;
        --config-size) need "$@"; config_size="$2"; shift 2 ;;
        --vq-size)     need "$@"; vq_size="$2"; shift 2 ;;
        --mem)         need "$@"; mem="$2"; shift 2 ;;
        --smp)         need "$@"; smp="$2"; shift 2 ;;
        --kvm)         kvm=1; shift ;;
        --serial)      need "$@"; serial="$2"; shift 2 ;;
        --qmp)         need "$@"; qmp="$2"; shift 2 ;;
        --append)      need "$@"; append_extra="$2"; shift 2 ;;
        --kernel)      need "$@"; kernel="$2"; shift 2 ;;
        --initrd)      need "$@"; initrd="$2"; shift 2 ;;
        --dry-run)     dry_run=1; shift ;;
        --print-device) print_device=1; shift ;;
        -h|--help)     usage; exit 0 ;;
        --)            shift; extra=("$@"); break ;;
        *)             die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ $queues =~ ^[0-9]+$ && $config_size =~ ^[0-9]+$ && $smp =~ ^[0-9]+$ ]] \
    || die "--queues, --config-size and --smp take numbers"
[[ -z $vq_size || $vq_size =~ ^[0-9]+$ ]] || die "--vq-size takes a number"

# The virtio-nn device: the one place its QEMU properties are built.
dev="vhost-user-test-device-pci,id=nn0dev,bus=rp0,chardev=nn0"
dev+=",virtio-id=$VIRTIO_NN_DEVICE_ID,num_vqs=$((queues + 1)),config_size=$config_size"
[[ -n $vq_size ]] && dev+=",vq_size=$vq_size"
if ((print_device)); then
    echo "$dev"
    exit 0
fi

[[ -x $QEMU_ROOT/usr/bin/qemu-system-x86_64 ]] || die "no QEMU in $QEMU_ROOT: run scripts/setup-host.sh"
[[ -f $kernel ]] || die "no kernel at $kernel: run scripts/build-kernel.sh"
[[ -f $initrd ]] || die "no initramfs at $initrd: run scripts/build-initramfs.sh"

args=(
    -name virtio-nn-guest
    -machine q35 -nodefaults -no-user-config -display none -no-reboot
    -m "$mem"
    # one CPU per socket: without ACPI the guest enumerates CPUs from the MP
    # table, and Linux 6.12 only takes one CPU per package from it here
    -smp "$smp,sockets=$smp,cores=1,threads=1"
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" -numa node,memdev=mem
    # native PCIe hotplug on the root port (guest has no ACPI)
    -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off
    -device pcie-root-port,id=rp0,chassis=1,slot=1
    -kernel "$kernel" -initrd "$initrd"
    -append "console=ttyS0 quiet panic=-1 ${append_extra}"
)

if ((kvm)); then
    args+=(-accel kvm -cpu host)
else
    args+=(-accel tcg)
fi

case "$serial" in
    stdio)  args+=(-serial stdio) ;;
    unix:*) args+=(-chardev "socket,id=ser0,path=${serial#unix:},server=on,wait=on"
                   -serial chardev:ser0) ;;
    file:*) args+=(-serial "file:${serial#file:}") ;;
    *)      die "--serial must be stdio, unix:PATH or file:PATH" ;;
esac

[[ -n $qmp ]] && args+=(-qmp "unix:$qmp,server=on,wait=off")

if [[ -n $socket ]]; then
    [[ -S $socket ]] || die "$socket is not a socket (is the daemon running?)"
    args+=(-chardev "socket,id=nn0,path=$socket" -device "$dev")
fi

args+=("${extra[@]}")

if ((dry_run)); then
    for a in "${QEMU_CMD[@]}" "${args[@]}"; do
        if [[ $a =~ ^[A-Za-z0-9_./:,=@+-]+$ ]]; then printf '%s ' "$a"; else printf '%q ' "$a"; fi
    done
    echo
    exit 0
fi
exec "${QEMU_CMD[@]}" "${args[@]}"
