// SPDX-License-Identifier: MIT
#include "edu.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kh/kh.h>

#include "check.h"

#define EDU_ID		   0x00
#define EDU_DMA_SRC	   0x80
#define EDU_DMA_DST	   0x88
#define EDU_DMA_COUNT	   0x90
#define EDU_DMA_CMD	   0x98
#define EDU_CMD_START	   1u
#define EDU_CMD_TO_RAM	   2u
#define EDU_BUFFER	   0x40000u /* the device's own 4 KiB buffer, in its DMA address space */
#define PCI_COMMAND	   0x04
#define PCI_COMMAND_MASTER 0x4
#define VFIO_PCI_BAR0	   0
#define VFIO_PCI_CONFIG	   7

static void edu_write64(const struct edu *e, uint64_t reg, uint64_t value)
{
	/* The device takes 64-bit registers as two 32-bit halves. */
	uint32_t lo = (uint32_t)value, hi = (uint32_t)(value >> 32);

	CHECK_EQ(pwrite(e->fd, &lo, 4, (off_t)(e->bar0 + reg)), 4);
	CHECK_EQ(pwrite(e->fd, &hi, 4, (off_t)(e->bar0 + reg + 4)), 4);
}

static uint32_t edu_read32(const struct edu *e, uint64_t reg)
{
	uint32_t value;

	CHECK_EQ(pread(e->fd, &value, 4, (off_t)(e->bar0 + reg)), 4);
	return value;
}

void edu_init(struct edu *e, int vfio_fd)
{
	struct kh_region bar0, config;
	uint16_t command;

	CHECK_OK(kh_vfio_region(vfio_fd, VFIO_PCI_BAR0, &bar0));
	CHECK_OK(kh_vfio_region(vfio_fd, VFIO_PCI_CONFIG, &config));
	CHECK(bar0.size >= 0x100);
	e->fd = vfio_fd;
	e->bar0 = bar0.offset;
	CHECK_EQ(edu_read32(e, EDU_ID), 0x010000ed);
	/* A device may only start DMA once it is a bus master. */
	CHECK_EQ(pread(vfio_fd, &command, 2, (off_t)(config.offset + PCI_COMMAND)), 2);
	command |= PCI_COMMAND_MASTER;
	CHECK_EQ(pwrite(vfio_fd, &command, 2, (off_t)(config.offset + PCI_COMMAND)), 2);
}

bool edu_dma_try(const struct edu *e, uint64_t iova, uint32_t len, bool to_ram)
{
	struct timespec pause = {0, 1000000};

	edu_write64(e, EDU_DMA_SRC, to_ram ? EDU_BUFFER : iova);
	edu_write64(e, EDU_DMA_DST, to_ram ? iova : EDU_BUFFER);
	edu_write64(e, EDU_DMA_COUNT, len);
	edu_write64(e, EDU_DMA_CMD, EDU_CMD_START | (to_ram ? EDU_CMD_TO_RAM : 0));
	for (int i = 0; i < 5000 && (edu_read32(e, EDU_DMA_CMD) & EDU_CMD_START); i++)
		nanosleep(&pause, NULL);
	return !(edu_read32(e, EDU_DMA_CMD) & EDU_CMD_START);
}

void edu_dma(const struct edu *e, uint64_t iova, uint32_t len, bool to_ram)
{
	CHECK(edu_dma_try(e, iova, len, to_ram));
}

bool all_bytes(const uint8_t *p, size_t n, uint8_t value)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != value)
			return false;
	return true;
}

const char *vm_backend_expected(const char *backend)
{
	if (!getenv("IOMMUD_VM_IOMMU"))
		return NULL;
	if (strcmp(backend, "auto") != 0)
		return backend;
	return access("/dev/iommu", F_OK) == 0 ? "iommufd" : "vfio-type1";
}
