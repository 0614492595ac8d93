#!/bin/sh
# The initrd's /init (busybox sh): verify the root, mount it read-only, hand over to the service.
#
# The root is an erofs volume with its dm-verity hash tree appended (/dev/vda); its root hash, salt and
# size come from the kernel command line, which the UKI carries and the boot measures. Every failure
# powers the machine off: nothing runs from an unverified root, and there is no shell to fall back to.
# DATA_DIR is a tmpfs owned by the service's user; the sealed model lives on the second disk (/dev/vdb), formatted on first boot.
export PATH=/bin

fail() {
    echo "init: $*; powering off" > /dev/console
    poweroff -f
    sleep 60
}

mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
exec < /dev/console > /dev/console 2>&1
echo "init: started after $(cut -d' ' -f1 /proc/uptime) s"

# Modules in dependency order (the build lists them from the kernel package's modules.dep); the TEE
# guest drivers are optional: each loads only in its own kind of guest.
while read -r m optional; do
    insmod "/lib/modules/$m" 2>/dev/null || [ -n "$optional" ] || fail "cannot load $m"
done < /etc/modules

# What the stub measured into PCR 11 (the UKI's sections), for the console: a verifier recomputes it from
# the UKI file alone. Absent without a TPM (a TDX or SEV-SNP guest has its own registers).
[ -r /sys/class/tpm/tpm0/pcr-sha256/11 ] && echo "init: PCR 11 (sha256) $(cat /sys/class/tpm/tpm0/pcr-sha256/11)"

ROOTHASH= SALT= BLOCKS=
for w in $(cat /proc/cmdline); do
    case "$w" in
        roothash=*) ROOTHASH="${w#roothash=}" ;;
        verity.salt=*) SALT="${w#verity.salt=}" ;;
        verity.blocks=*) BLOCKS="${w#verity.blocks=}" ;;
    esac
done
[ -n "$ROOTHASH" ] && [ -n "$SALT" ] && [ -n "$BLOCKS" ] || fail "no roothash=, verity.salt= or verity.blocks= on the command line"

i=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "no /dev/vda (root) and /dev/vdb (data) after 10 s"
    sleep 0.1
done

# dm-verity over the data blocks; the hash tree follows them after its superblock (veritysetup --hash-offset).
TABLE="0 $((BLOCKS * 8)) verity 1 /dev/vda /dev/vda 4096 4096 $BLOCKS $((BLOCKS + 1)) sha256 $ROOTHASH $SALT 1 panic_on_corruption"
dmsetup --noudevsync create root --readonly --table "$TABLE" || fail "dm-verity refused the root"
dmsetup --noudevsync mknodes root
mkdir -p /newroot
mount -t erofs -o ro /dev/mapper/root /newroot || fail "cannot mount the verified root"

# /etc/entrypoint: the service's command line (set -- ...), DATA_DIR, SERVICE_UID/GID and its environment.
. /etc/entrypoint
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || fail "cannot mount /tmp"
mount -t tmpfs -o "mode=0700,uid=$SERVICE_UID,gid=$SERVICE_GID,nosuid,nodev,noexec" tmpfs "/newroot$DATA_DIR" || fail "cannot mount DATA_DIR $DATA_DIR"
mkdir -p "/newroot$DATA_DIR/sealed"
if ! mount -t ext4 -o sync,nosuid,nodev,noexec /dev/vdb "/newroot$DATA_DIR/sealed" 2>/dev/null; then
    # Only a blank disk is formatted: a disk with anything on it that is not ext4 is refused.
    [ -z "$(head -c 1048576 /dev/vdb | tr -d '\000' | head -c 1)" ] || fail "the data disk holds something that is not ext4"
    echo "init: formatting the blank data disk"
    mke2fs -q -L enclave-data /dev/vdb > /dev/null || fail "cannot format the data disk"
    mount -t ext4 -o sync,nosuid,nodev,noexec /dev/vdb "/newroot$DATA_DIR/sealed" || fail "cannot mount the data disk"
fi
chown "$SERVICE_UID:$SERVICE_GID" "/newroot$DATA_DIR/sealed" && chmod 0700 "/newroot$DATA_DIR/sealed" || fail "cannot own the data disk"

# The address from DHCP (QEMU's user-mode network answers it too, as clouds' networks do); busybox
# udhcpc applies the lease through /etc/udhcpc.sh and quits. No name server is set: the service
# needs none unless it fetches collateral itself.
ip link set lo up
ip link set eth0 up || fail "no network interface eth0"
udhcpc -i eth0 -n -q -f -t 10 -T 1 -s /etc/udhcpc.sh > /dev/null || fail "no address from DHCP on eth0"

# configfs-tsm (TDX and SEV-SNP reports, enclave/tsm.py), in a TDX or SEV-SNP guest only (its driver
# loaded above): the service, which runs as SERVICE_UID and not as root, makes its own report
# requests, so the report folder is handed to it; /sys moves into the new root with this mount inside
# it. Elsewhere configfs stays unmounted and `--platform auto` finds no configfs-tsm.
if [ -d /sys/module/tdx_guest ] || [ -d /sys/module/sev_guest ]; then
    mount -t configfs configfs /sys/kernel/config || fail "cannot mount configfs"
    [ -d /sys/kernel/config/tsm/report ] || fail "a TDX or SEV-SNP guest without configfs-tsm"
    chown "$SERVICE_UID:$SERVICE_GID" /sys/kernel/config/tsm/report || fail "cannot hand configfs-tsm to the service"
fi

# The boot's event logs, for the service's evidence (a verifier replays them against the quoted
# registers, so whoever carries them needs no trust): the TPM's (securityfs, root only) and, in a TDX
# guest, the CC event log from the ACPI CCEL table. Copied into the new root's /run, readable by the
# service; the TPM itself is handed to the service's user.
mkdir -p /newroot/run/enclave-infer
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
[ -r /sys/kernel/security/tpm0/binary_bios_measurements ] && cat /sys/kernel/security/tpm0/binary_bios_measurements > /newroot/run/enclave-infer/tpm-eventlog
[ -r /sys/firmware/acpi/tables/data/CCEL ] && cat /sys/firmware/acpi/tables/data/CCEL > /newroot/run/enclave-infer/ccel-eventlog
umount /sys/kernel/security 2>/dev/null
[ -c /dev/tpmrm0 ] && { chown "$SERVICE_UID:$SERVICE_GID" /dev/tpmrm0 || fail "cannot hand the TPM to the service"; }

echo "init: root $ROOTHASH verified and mounted after $(cut -d' ' -f1 /proc/uptime) s; starting the service"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot "$@"
