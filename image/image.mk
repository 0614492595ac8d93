# The released image (image/README.md): one root file system from pinned inputs, shipped as an OCI
# image (and, by image/uki/, as a UKI for confidential VMs). Run as root; none of it is part of `make test`.
IMAGE_OUT ?= build/image
IMAGE_PY  ?= python3
# Where the Ray image is pushed: the rendered OUT/deploy/rayservice.yaml names it there, by digest.
IMAGE_REGISTRY ?= registry.example.com

.PHONY: image-tools image-lock image rootfs image-oci image-ray oci-demo image-twice

# The build's tools, from Debian (what the project's image build needs and nothing else).
image-tools:
	apt-get update
	apt-get install -y --no-install-recommends mmdebstrap umoci skopeo erofs-utils git python3-pip

# Move the pins: resolve the Python wheels again (requirements.lock, requirements-ray.lock, tools.lock)
# and rewrite image/debian.lock from a fresh build.
image-lock:
	$(IMAGE_PY) image/lock_python.py
	$(IMAGE_PY) image/build_rootfs.py $(IMAGE_OUT) --relock

rootfs:
	$(IMAGE_PY) image/build_rootfs.py $(IMAGE_OUT)

image-oci: rootfs
	$(IMAGE_PY) image/oci.py $(IMAGE_OUT)

# The Ray image (KubeRay): the same root file system and a layer with Ray Serve (requirements-ray.lock).
image-ray: image-oci
	$(IMAGE_PY) image/ray_image.py $(IMAGE_OUT)

# Other parts add themselves as prerequisites (image: image-uki); the manifest is written last, and
# with it OUT/deploy/rayservice.yaml, naming the Ray image by the digest it lists. Then the reference
# measurements are derived from the artifacts it lists (OUT/measurements.json, `measure --image`), and
# the manifest is written again, carrying them and their IMAGE: pin.
image: image-oci image-ray $(STAMP)
	$(IMAGE_PY) image/release.py $(IMAGE_OUT) --registry $(IMAGE_REGISTRY)
	$(VENV)/bin/enclave-infer measure --image $(IMAGE_OUT) --out $(IMAGE_OUT)/measurements.json
	$(IMAGE_PY) image/release.py $(IMAGE_OUT) --registry $(IMAGE_REGISTRY) --measurements $(IMAGE_OUT)/measurements.json

# Two builds in two folders, compared file by file (the first differing file, and member, named).
image-twice:
	$(MAKE) image IMAGE_OUT=build/image-a
	$(MAKE) image IMAGE_OUT=build/image-b
	$(IMAGE_PY) image/compare.py build/image-a build/image-b

# The OCI image run here without a container engine (unshare + chroot), classifying the demo photos.
oci-demo: $(MODEL)
	$(PY) image/run_oci.py --image $(IMAGE_OUT) --model $(MODEL)
