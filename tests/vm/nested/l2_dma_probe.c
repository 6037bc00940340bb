// SPDX-License-Identifier: MIT
/* Runs as /init's child inside the nested (L2) guest, as root, linked statically: finds the edu
 * device passed through from L1 by walking sysfs, makes it a bus master through its config file,
 * and moves 4095 bytes RAM -> device -> another RAM page by their physical addresses (from
 * /proc/self/pagemap), which must arrive intact. With edufault=ADDR on the kernel command line it
 * then aims a DMA at ADDR (beyond the guest's RAM: L1's IOMMU must block it) and moves the bytes
 * once more, which must still work. Prints one "l2: PASS|FAIL what" line per check. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define EDU_BUFFER 0x40000u
#define XFER	   4095u
#define PAGE	   4096u

static int failures;

static void report(bool ok, const char *what)
{
	printf("l2: %s %s\n", ok ? "PASS" : "FAIL", what);
	failures += !ok;
}

static unsigned read_hex(const char *dir, const char *file)
{
	char path[600];
	unsigned value = 0;
	FILE *f;

	(void)snprintf(path, sizeof(path), "%s/%s", dir, file);
	f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%x", &value) != 1)
			value = 0;
		(void)fclose(f);
	}
	return value;
}

/* The sysfs directory of the first edu device, in dir. */
static bool find_edu(char *dir, size_t size)
{
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *de;
	bool found = false;

	while (d && !found && (de = readdir(d))) {
		(void)snprintf(dir, size, "/sys/bus/pci/devices/%.200s", de->d_name);
		found = read_hex(dir, "vendor") == 0x1234 && read_hex(dir, "device") == 0x11e8;
	}
	if (d)
		(void)closedir(d);
	return found;
}

static bool bus_master(const char *dir)
{
	char path[600];
	uint16_t command;
	int fd;
	bool ok;

	(void)snprintf(path, sizeof(path), "%s/config", dir);
	fd = open(path, O_RDWR);
	ok = fd >= 0 && pread(fd, &command, 2, 4) == 2;
	command |= 0x6; /* memory space, bus master */
	ok = ok && pwrite(fd, &command, 2, 4) == 2;
	if (fd >= 0)
		(void)close(fd);
	return ok;
}

static uint64_t physical(const void *va)
{
	uint64_t entry = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || pread(fd, &entry, 8, (off_t)((uintptr_t)va / PAGE * 8)) != 8)
		entry = 0;
	if (fd >= 0)
		(void)close(fd);
	return (entry >> 63) ? (entry & ((1ull << 55) - 1)) * PAGE : 0;
}

static void reg_write(volatile uint32_t *bar, unsigned offset, uint32_t value)
{
	bar[offset / 4] = value;
}

/* One transfer; cmd 1 RAM -> device, 3 device -> RAM. */
static void dma(volatile uint32_t *bar, uint64_t src, uint64_t dst, uint32_t cmd)
{
	reg_write(bar, 0x80, (uint32_t)src);
	reg_write(bar, 0x84, (uint32_t)(src >> 32));
	reg_write(bar, 0x88, (uint32_t)dst);
	reg_write(bar, 0x8c, (uint32_t)(dst >> 32));
	reg_write(bar, 0x90, XFER);
	reg_write(bar, 0x98, cmd);
	while (bar[0x98 / 4] & 1)
		usleep(1000);
}

static bool round_trip(volatile uint32_t *bar, uint8_t *from, uint8_t *to, uint8_t seed)
{
	for (unsigned i = 0; i < XFER; i++)
		from[i] = (uint8_t)(seed + i * 7);
	memset(to, 0, PAGE);
	dma(bar, physical(from), EDU_BUFFER, 1);
	dma(bar, EDU_BUFFER, physical(to), 3);
	return memcmp(from, to, XFER) == 0;
}

static uint64_t fault_address(void)
{
	char cmdline[1024] = "";
	FILE *f = fopen("/proc/cmdline", "r");
	const char *at;

	if (f) {
		if (!fgets(cmdline, sizeof(cmdline), f))
			cmdline[0] = '\0';
		(void)fclose(f);
	}
	at = strstr(cmdline, "edufault=");
	return at ? strtoull(at + 9, NULL, 0) : 0;
}

int main(void)
{
	char dir[512], path[600];
	volatile uint32_t *bar = MAP_FAILED;
	uint8_t *pages;
	uint64_t fault;
	int fd;

	report(find_edu(dir, sizeof(dir)), "edu passed through");
	report(failures == 0 && bus_master(dir), "bus master set through sysfs");
	(void)snprintf(path, sizeof(path), "%s/resource0", dir);
	fd = failures ? -1 : open(path, O_RDWR | O_SYNC);
	if (fd >= 0)
		bar = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	report(bar != MAP_FAILED && bar[0] == 0x010000ed, "BAR0 answers as edu");
	pages = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED | MAP_POPULATE, -1, 0);
	if (failures || pages == MAP_FAILED)
		return 1;
	report(physical(pages) && physical(pages + PAGE), "pagemap gives physical addresses");
	report(round_trip(bar, pages, pages + PAGE, 1), "DMA lands: 4095 bytes RAM->edu->RAM");
	fault = fault_address();
	if (fault) {
		dma(bar, EDU_BUFFER, fault, 3);
		printf("l2: DMA aimed at 0x%llx, beyond RAM\n", (unsigned long long)fault);
		report(round_trip(bar, pages, pages + PAGE, 2), "DMA after the blocked one lands");
	}
	printf("l2: %s\n", failures ? "FAILED" : "DONE");
	return failures != 0;
}
