#!/bin/sh
# busybox udhcpc's lease script in the initrd: apply the address and the default route it was given.
# (No lease renewal: udhcpc quits once bound, and the service runs in its place.)
case "$1" in
    deconfig) ip addr flush dev "$interface" ;;
    bound|renew)
        ip addr add "$ip/${mask:-24}" dev "$interface" || exit 1
        for r in $router; do ip route add default via "$r" dev "$interface" && break; done
        ;;
esac
exit 0
