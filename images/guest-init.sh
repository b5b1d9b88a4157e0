#!/bin/sh
# /init of the Vireo test guest (busybox). Installed by images/build-guest.sh.
# Prints exactly one line "VIREO-READY vcpus=N mem_kib=N kernel=RELEASE" on the console, then runs
# /etc/vireo/<name>.sh if the command line has vireo.run=<name>, then acts on vireo.exit=
# (poweroff (default) | reboot | shell | wait). With vireo.root=/dev/vdX it first mounts that
# ext4 disk (images/build-guest.sh makes build/guest/rootfs.ext4) and runs its /init, this same
# script, as the root. Ctrl-Alt-Del (vireo-vmm's PUT /vm/shutdown) is a clean power-off at any
# point, and so are busybox's poweroff/halt/reboot. EC2 user data (/etc/vireo/user-data) that is a
# script runs after the ready line. Problems are reported as "VIREO-ERROR ..." lines;
# this script never returns (PID 1 returning would panic the kernel).
PATH=/bin
export PATH
set -f

halt_now() {
    poweroff -f
    sleep 1
    echo "VIREO-ERROR poweroff -f failed; halting"
    while :; do sleep 3600; done
}
die() {
    echo "VIREO-ERROR $*"
    halt_now
}

# Ctrl-Alt-Del: with /proc/sys/kernel/ctrl-alt-del at 0 the kernel sends PID 1 a SIGINT
# instead of restarting at once. Everything else gets SIGTERM and 2 s to exit (then SIGKILL),
# file systems are unmounted, or remounted read-only where busy (the root disk), then power off.
on_ctrl_alt_del() {
    echo "vireo-init: ctrl-alt-del, powering off"
    shut_down
    halt_now
}
# busybox's poweroff/halt (SIGUSR2/SIGUSR1 to PID 1) and reboot (SIGTERM) without -f, as a user
# data script would call them.
on_poweroff() {
    echo "vireo-init: poweroff requested"
    shut_down
    halt_now
}
on_reboot() {
    echo "vireo-init: reboot requested"
    shut_down
    reboot -f
}
shut_down() {
    trap '' INT TERM USR1 USR2 # a second request while this runs changes nothing
    kill -TERM -1 2>/dev/null
    i=0
    while user_processes_left && [ $i -lt 20 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL -1 2>/dev/null
    sync
    umount -a -r 2>/dev/null
}
# True while a process other than init runs (kernel threads and zombies have no exe).
user_processes_left() {
    set +f
    for d in /proc/[0-9]*; do
        [ "$d" = /proc/1 ] || [ ! -e "$d/exe" ] || { set -f; return 0; }
    done
    set -f
    return 1
}
# Runs "$@" in the background and waits: the shell runs a trap only between commands, but a
# trapped signal interrupts `wait` at once. Returns the command's status. A background command's
# stdin would be /dev/null; it keeps the console, which scripts and the shell may read.
run_interruptibly() {
    if [ -r /dev/console ]; then
        "$@" </dev/console &
    else
        "$@" &
    fi
    wait $!
}
trap on_ctrl_alt_del INT
trap on_poweroff USR1 USR2
trap on_reboot TERM
# switch_to_disk DEV: mount DEV and carry on from its /init (this script) as the root.
switch_to_disk() {
    i=0
    while [ ! -b "$1" ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    mkdir -p /newroot
    mount -t ext4 "$1" /newroot || die "cannot mount vireo.root=$1"
    [ -x /newroot/init ] || die "vireo.root=$1 has no /init"
    # User data came in the initramfs; carry it over to the disk root in /dev (a tmpfs that
    # moves along), leaving the disk as it is.
    if [ -f /etc/vireo/user-data ]; then
        mkdir -p /dev/.vireo && cp /etc/vireo/user-data /dev/.vireo/user-data
    fi
    for m in dev proc sys; do
        mount --move "/$m" "/newroot/$m" || die "cannot move /$m to vireo.root=$1"
    done
    VIREO_SWITCHED=1
    export VIREO_SWITCHED
    exec switch_root /newroot /init
}

# Loads the virtio drivers (and their dependencies through modules.dep) of the devices this
# machine has, nothing when it has none: loading modules costs a nested guest tenths of a second.
# virtio-mmio devices are declared in ACPI (LNRO0005); virtio-pci devices have vendor 0x1af4.
load_virtio_drivers() {
    set +f # the script runs with globbing off; this function needs it
    transports=
    for d in /sys/bus/acpi/devices/LNRO0005:*; do
        [ -e "$d" ] && transports=virtio_mmio
    done
    for v in /sys/bus/pci/devices/*/vendor; do
        [ -r "$v" ] && [ "$(cat "$v")" = 0x1af4 ] && transports="$transports virtio_pci"
    done
    if [ -z "$transports" ]; then
        set -f
        return 0
    fi
    # shellcheck disable=SC2086 # one word per module
    modprobe -qa $transports >/dev/null 2>&1
    for id in /sys/bus/virtio/devices/*/device; do
        [ -r "$id" ] || continue
        case $(cat "$id") in
        0x0001) m=virtio_net ;;
        0x0002) m=virtio_blk ;;
        0x0004) m=virtio_rng ;;
        0x0005) m=virtio_balloon ;;
        0x0013) m=vmw_vsock_virtio_transport ;;
        *) continue ;;
        esac
        modprobe -q "$m" >/dev/null 2>&1
    done
    set -f
}

# EC2 user data: vireod appends it to the initramfs as /etc/vireo/user-data (switch_to_disk carries
# it to /dev/.vireo). A script (first line #!interpreter) runs at every boot, like cloud-init's
# per-boot scripts, with its output on the console between VIREO-USERDATA lines.
run_user_data() {
    ud=
    for f in /etc/vireo/user-data /dev/.vireo/user-data; do
        [ -f "$f" ] && ud=$f
    done
    [ -n "$ud" ] || return 0
    first=
    read -r first <"$ud"
    case $first in
    '#!'*)
        echo "VIREO-USERDATA start"
        # shellcheck disable=SC2086 # the interpreter line may carry arguments
        run_interruptibly ${first#??} "$ud"
        echo "VIREO-USERDATA exit=$?"
        ;;
    *) echo "VIREO-USERDATA present ($(wc -c <"$ud") bytes, not a script)" ;;
    esac
}

main() {
    mount -t proc proc /proc 2>/dev/null
    [ -r /proc/cmdline ] || die "cannot mount /proc"
    echo 0 >/proc/sys/kernel/ctrl-alt-del || echo "VIREO-ERROR cannot turn off the kernel's ctrl-alt-del reboot"
    mount -t sysfs sysfs /sys 2>/dev/null
    [ -d /sys/devices/system/cpu ] || die "cannot mount /sys"
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    [ -c /dev/null ] || die "cannot mount /dev"

    load_virtio_drivers
    if [ -z "${VIREO_SWITCHED:-}" ]; then
        read -r cmdline </proc/cmdline
        for w in $cmdline; do
            case $w in vireo.root=*) switch_to_disk "${w#vireo.root=}" ;; esac
        done
    fi

    read -r online </sys/devices/system/cpu/online
    vcpus=0
    IFS=,
    for r in $online; do
        case $r in
        *-*) vcpus=$((vcpus + ${r#*-} - ${r%-*} + 1)) ;;
        [0-9]*) vcpus=$((vcpus + 1)) ;;
        esac
    done
    unset IFS
    mem=
    while read -r k v _; do
        [ "$k" = MemTotal: ] && { mem=$v; break; }
    done </proc/meminfo
    read -r kver </proc/sys/kernel/osrelease
    if [ "$vcpus" -eq 0 ] || [ -z "$mem" ] || [ -z "$kver" ]; then
        die "cannot read vcpus/memory/kernel (online='$online' mem='$mem' kernel='$kver')"
    fi
    echo "VIREO-READY vcpus=$vcpus mem_kib=$mem kernel=$kver"

    action=poweroff
    run=
    read -r cmdline </proc/cmdline
    for w in $cmdline; do
        case $w in
        vireo.exit=*) action=${w#vireo.exit=} ;;
        vireo.run=*) run=${w#vireo.run=} ;;
        esac
    done

    if [ -n "$run" ]; then
        case $run in
        *[!A-Za-z0-9_.-]* | .*) echo "VIREO-ERROR bad vireo.run=$run" ;;
        *)
            if [ -f "/etc/vireo/$run.sh" ]; then
                run_interruptibly sh "/etc/vireo/$run.sh"
                rc=$?
                [ $rc -eq 0 ] || echo "VIREO-ERROR vireo.run=$run exited with status $rc"
            else
                echo "VIREO-ERROR vireo.run=$run: /etc/vireo/$run.sh not found"
            fi
            ;;
        esac
    fi

    run_user_data

    case $action in
    poweroff) halt_now ;;
    reboot)
        # The kernel picks the platform's reset (vireo-vmm: the ACPI reset register);
        # reboot= on the command line overrides it.
        reboot -f
        die "reboot -f failed"
        ;;
    shell)
        run_interruptibly setsid cttyhack sh -l
        halt_now
        ;;
    wait) while :; do run_interruptibly sleep 3600; done ;;
    *) die "unknown vireo.exit=$action; powering off" ;;
    esac
}

main
die "init fell through"
