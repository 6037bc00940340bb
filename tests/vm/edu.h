/* SPDX-License-Identifier: MIT */
/*
 * qemu's edu PCI device, driven through a VFIO device fd with pread/pwrite (its regions found
 * with kernel-helper, which issues the ioctl): a DMA engine that copies between its own 4 KiB
 * buffer and an IOVA, so a test can see bytes land at, or be kept from, a mapped IOVA. The
 * register map is in ../shared/vm/README.md. Also which backend the VM tests that drive it must
 * be on.
 */
#ifndef IOMMUD_TESTS_VM_EDU_H
#define IOMMUD_TESTS_VM_EDU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
/* qemu 7.2's edu refuses (and aborts qemu on) a transfer that fills its whole buffer. */
#define EDU_XFER 2048u

struct edu {
	int fd; /* borrowed VFIO device fd */
	uint64_t bar0;
};

/* Finds BAR0, checks the device answers as edu, and makes it a bus master. */
void edu_init(struct edu *e, int vfio_fd);
/* One transfer between the device buffer and an IOVA (below 256 MiB: edu masks to 28 bits);
 * returns when the device says done, whether or not the IOMMU let it through. */
void edu_dma(const struct edu *e, uint64_t iova, uint32_t len, bool to_ram);
/* The same, false when the device did not say done within 5 s, for a caller that reports it. */
bool edu_dma_try(const struct edu *e, uint64_t iova, uint32_t len, bool to_ram);
/* Whether the n bytes at p all still hold value: how a test sees that a DMA did not land. */
bool all_bytes(const uint8_t *p, size_t n, uint8_t value);

/*
 * The backend a test asked for by name must come out as in the VM tier's guest: that name, or
 * for "auto" the one the kernel calls for: iommufd where /dev/iommu is, else vfio-type1 (Debian
 * 12's kernel), never the emulated IOMMU, which moves no device's DMA. NULL outside the guest
 * (no IOMMUD_VM_IOMMU), where the test skips.
 */
const char *vm_backend_expected(const char *backend);

#endif
