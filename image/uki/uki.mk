# The UKI for confidential VMs and its boot here (image/uki/build_uki.py, image/vm_demo.py); not in `make test`.
# Included by the top Makefile after image/image.mk (IMAGE_OUT, rootfs). Run as root.
UKI_TOOLS := erofs-utils cryptsetup-bin binutils kmod dosfstools mtools e2fsprogs \
             qemu-system-x86 ovmf swtpm swtpm-tools tpm2-tools
BACKPORTS := /etc/apt/sources.list.d/bookworm-backports.sources
IMAGE_OUT ?= build/image

.PHONY: uki-tools image-uki uki-dev vm-demo vm-demo-dev

# bookworm-backports' list: the pinned 6.12 cloud kernel comes from there (image/uki/packages.txt),
# from the Debian archive this machine's apt already uses (or DEBIAN_MIRROR).
DEBIAN_MIRROR ?= $(shell sed -n 's|^URIs: *\(.*/debian\)/*$$|\1|p' /etc/apt/sources.list.d/*.sources | head -n 1)
$(BACKPORTS):
	@test -n "$(DEBIAN_MIRROR)" || { echo "uki-tools: no Debian archive in apt's sources: set DEBIAN_MIRROR"; exit 1; }
	printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' '$(DEBIAN_MIRROR)' > $@

uki-tools: $(BACKPORTS)
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(UKI_TOOLS)
	# QEMU 10 from backports: Debian 12's 7.2 crashes the guest under TCG (image/vm_demo.py: TCG_CPU).
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86

# OUT/uki/{enclave-infer.efi,initrd.img,rootfs.verity.img} and OUT/uki.json from the root file system tarball
# (the digest-pinned one the OCI layer is; extracted with its owners, as root).
image-uki: rootfs
	SOURCE_DATE_EPOCH=$$(cat $(IMAGE_OUT)/SOURCE_DATE_EPOCH) \
	  python3 image/uki/build_uki.py --rootfs $(IMAGE_OUT)/rootfs.tar --out $(IMAGE_OUT)
image: image-uki
# `make image-tools` installs the UKI's tools too.
image-tools: uki-tools

# The pipeline without the real root: busybox httpd as the service (build/uki-dev).
uki-dev:
	python3 image/uki/build_uki.py --rootfs dev --out build/uki-dev --entrypoint image/uki/entrypoint-dev.sh

# Boots the UKI in QEMU (OVMF, swtpm; KVM if a probe boots, else TCG), pins it by the IMAGE: that
# `measure --image` derives, provisions the demo model, classifies; then boots two altered UKIs, refused.
vm-demo: $(MODEL)
	@test -f $(IMAGE_OUT)/release.json || $(MAKE) image
	$(PY) image/vm_demo.py --image $(IMAGE_OUT) --refusals

vm-demo-dev: uki-dev
	python3 image/vm_demo.py --image build/uki-dev --work build/vm-dev --dev
