# The development root's service: busybox httpd answers "ready" on port 8080 (as root: no setpriv there).
DATA_DIR=/var/lib/enclave-infer SERVICE_UID=0 SERVICE_GID=0
export PATH=/bin HOME=/
set -- /bin/busybox httpd -f -p 8080 -h /www
