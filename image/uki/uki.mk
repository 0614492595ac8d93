# The UKI for confidential VMs and its boot here (image/uki/build_uki.py, image/vm_demo.py); not in `make test`.
# uki-tools: Debian's tools, and bookworm-backports' list for the pinned 6.12 cloud kernel (image/uki/packages.txt).
UKI_OUT    := build/image/uki
UKI_ROOTFS ?= build/image/rootfs.tar
UKI_TOOLS  := erofs-utils cryptsetup-bin binutils kmod dosfstools mtools e2fsprogs qemu-system-x86 ovmf swtpm swtpm-tools tpm2-tools
BACKPORTS  := /etc/apt/sources.list.d/bookworm-backports.sources

.PHONY: uki-tools uki uki-dev vm-demo vm-demo-dev

$(BACKPORTS):
	printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $@

uki-tools: $(BACKPORTS)
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(UKI_TOOLS)

# root.img (erofs + dm-verity), initrd.img, uki.efi and uki.json in $(UKI_OUT), from the root file system.
uki: $(UKI_ROOTFS)
	SOURCE_DATE_EPOCH=$$(cat build/image/SOURCE_DATE_EPOCH 2>/dev/null || git log -1 --format=%ct) \
	  python3 image/uki/build_uki.py --rootfs $(UKI_ROOTFS) --out $(UKI_OUT)

# The pipeline without the real root: busybox httpd as the service (build/uki-dev).
uki-dev:
	python3 image/uki/build_uki.py --rootfs dev --out build/uki-dev --entrypoint image/uki/entrypoint-dev.sh

# Boots the UKI in QEMU (OVMF, swtpm, TCG unless ENCLAVE_VM_ACCEL=kvm), provisions the demo model, classifies.
vm-demo: $(MODEL)
	@test -f $(UKI_OUT)/uki.efi || $(MAKE) uki
	$(PY) image/vm_demo.py --image $(UKI_OUT)

vm-demo-dev: uki-dev
	python3 image/vm_demo.py --image build/uki-dev --work build/vm-dev --dev
