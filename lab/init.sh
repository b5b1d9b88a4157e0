#!/bin/bash
# /init of the lab's L1 host, installed by lab/lab (/bin/bash is bash-static's static bash).
# It talks to lab/lab through serial ports:
#   ttyS0  kernel console and this script's diagnostics (saved to build/lab/last/console.log)
#   ttyS1  COMMAND's stdout          ttyS2  COMMAND's stderr
#   ttyS3  control lines: "BOOTED <uptime>", "EXIT <status>" or "FAIL <reason>"
PATH=/vireo/bin:/bin:/usr/bin:/usr/sbin:/sbin
HOME=/root
export PATH HOME
CTL=/dev/ttyS3

# stty sets the line with TCSADRAIN, so it also waits until the port has sent what it holds.
drain() { for t in "$@"; do stty -F "$t" raw -echo 2>/dev/null; done; }
halt_now() {
    drain /dev/ttyS1 /dev/ttyS2 $CTL
    poweroff -f
    while :; do sleep 3600; done
}
fail() {
    echo "lab-init: $*"
    echo "FAIL $*" >$CTL
    halt_now
}

# mount_disk NAME DIR: mount lab/lab's read-only disk NAME (NVMe serial vireo-NAME) on DIR.
mount_disk() {
    local want="vireo-$1" i=0 d s
    while :; do
        for d in /sys/block/nvme*; do
            [ -r "$d/device/serial" ] || continue
            read -r s <"$d/device/serial"
            if [ "$s" = "$want" ]; then
                mount -t ext4 -o ro,noatime "/dev/${d##*/}" "$2" || fail "cannot mount the $1 disk"
                return 0
            fi
        done
        i=$((i + 1))
        [ $i -lt 1000 ] || fail "the $1 disk (NVMe serial $want) did not appear"
        usleep 10000
    done
}

# disk_dev NAME: print the device of lab/lab's disk NAME (NVMe serial vireo-NAME).
disk_dev() {
    local want="vireo-$1" i=0 d s
    while :; do
        for d in /sys/block/nvme*; do
            [ -r "$d/device/serial" ] || continue
            read -r s <"$d/device/serial"
            if [ "$s" = "$want" ]; then
                echo "/dev/${d##*/}"
                return 0
            fi
        done
        i=$((i + 1))
        [ $i -lt 1000 ] || fail "the $1 disk (NVMe serial $want) did not appear"
        usleep 10000
    done
}

# wait_for_tsc_rate: wait (5 s at most) until the kernel has registered its TSC clocksource, which it
# does once its refined calibration (~1 s after boot) has set the TSC rate for good. KVM reads that
# rate when it loads and gives it to every guest vCPU as the rate to emulate. Loaded earlier, it
# takes the early PIT estimate, which is up to 1% off: where the estimate is high KVM runs every
# nested guest in its TSC catch-up mode (the TSC is pushed forward at each clock update), where low
# it logs "user requested TSC rate below hardware speed" and converts the guests' TSC-deadline
# timers at the wrong rate. Nested Debian guests stalled or triple-faulted now and then with either.
wait_for_tsc_rate() {
    local i c
    for ((i = 0; i < 500; i++)); do
        for c in $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource); do
            [ "$c" = tsc ] && return 0
        done
        usleep 10000
    done
    echo "lab-init: the TSC clocksource did not appear in 5 s; KVM loads with the early TSC rate"
}

# link_tree SRC DST: make SRC's files appear under DST through symlinks (whole directories where
# DST has none yet). A directory that an earlier disk linked whole (the qemu bundle's
# /lib/x86_64-linux-gnu, then the net bundle's) becomes a real one holding links to both.
link_tree() {
    local e t old
    for e in "$1"/*; do
        if [ ! -e "$e" ] || [ "${e##*/}" = lost+found ]; then continue; fi
        t="$2/${e##*/}"
        if [ ! -e "$t" ] && [ ! -L "$t" ]; then
            ln -s "$e" "$t"
        elif [ -d "$t" ] && [ -d "$e" ] && [ ! -L "$e" ]; then
            if [ -L "$t" ]; then
                old=$(readlink "$t")
                rm -f "$t" && mkdir "$t" && link_tree "$old" "$t"
            fi
            link_tree "$e" "$t"
        fi
    done
}

# load_modules LIST: insmod each module of LIST (paths under /lib/modules/KVER, in order).
load_modules() {
    local m err hint
    while read -r m; do
        if ! err=$(insmod "/lib/modules/$kver/$m" 2>&1); then
            hint=
            case $m in *kvm-amd*) hint=" (no AMD SVM in the L1 CPU?)" ;; esac
            fail "insmod ${m##*/} failed: ${err##*: }$hint"
        fi
    done <"$1"
}

main() {
    mount -t proc proc /proc
    read -r t_init _ </proc/uptime
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    [ -c $CTL ] || { echo "lab-init: no $CTL"; poweroff -f; }
    drain /dev/ttyS1 /dev/ttyS2 $CTL
    mkdir -p /dev/shm /dev/pts /run /tmp /var/tmp /root
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm
    mount -t devpts devpts /dev/pts 2>/dev/null
    chmod 1777 /tmp /var/tmp

    read -r kver </proc/sys/kernel/osrelease
    wait_for_tsc_rate
    read -r t_mods _ </proc/uptime
    load_modules /etc/lab/modules
    [ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm-amd (no SVM in the L1 CPU?)"
    read -r t_kvm _ </proc/uptime
    read -r disks </vireo/.lab/disks
    for d in $disks; do
        case $d in
        guest) mount_disk guest /vireo/guest ;;
        qemu)
            mount_disk qemu /lab/qemu
            link_tree /lab/qemu ""
            ;;
        net)
            # lab/lab --net: the VPC data plane's modules and tools (ip, bridge, nft, dnsmasq).
            load_modules /etc/lab/net-modules
            mkdir -p /lab/net /var/lib/misc
            [ -e /var/run ] || ln -s /run /var/run # iproute2 keeps named namespaces in /var/run/netns
            mount_disk net /lab/net
            link_tree /lab/net ""
            # PATH has /bin (busybox, whose `ip` lacks netns, tuntap, vxlan, -j) before /usr/sbin.
            for f in /lab/net/usr/sbin/*; do ln -sf "$f" "/bin/${f##*/}"; done
            read -r t_net _ </proc/uptime
            ;;
        ami)
            # lab/lab --ami: the Debian 12 AMI's files and its writable root disk in /vireo/ami.
            mkdir -p /lab/ami /vireo/ami
            mount_disk ami /lab/ami
            for f in /lab/ami/*; do [ "${f##*/}" = lost+found ] || ln -s "$f" "/vireo/ami/${f##*/}"; done
            ln -s "$(disk_dev ami-root)" /vireo/ami/root.raw
            ;;
        esac
    done
    [ -f /vireo/.lab/cmd ] || fail "no command in the lab initramfs"

    read -r up _ </proc/uptime
    echo "BOOTED $up init=$t_init modules=$t_mods kvm=$t_kvm${t_net:+ net=$t_net}" >$CTL
    # A heartbeat, so that lab/lab can tell a COMMAND that runs too long from an L1 that froze.
    (while :; do
        read -r up _ </proc/uptime
        echo "ALIVE $up" >$CTL
        sleep 5
    done) &
    cd /vireo || fail "no /vireo"
    sh -c "$(cat /vireo/.lab/cmd)" </dev/null >/dev/ttyS1 2>/dev/ttyS2
    rc=$?
    drain /dev/ttyS1 /dev/ttyS2
    echo "EXIT $rc" >$CTL
    halt_now
}

main
fail "init fell through"
