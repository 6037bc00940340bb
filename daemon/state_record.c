// SPDX-License-Identifier: MIT
#include "state_record.h"

#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "own_memfd.h"
#include "status.h"

/* Address space reserved for a record's mapping, so that growing the memfd never moves it;
 * compaction keeps a record far below this. */
#define RECORD_RESERVE (1ull << 34)
#define RECORD_STEP    (64u << 10)
#define FRAME_HEAD     8u

/* CRC-32C a byte at a time from a table: where the CPU has no crc32 instruction. */
static uint32_t crc32c_by_table(uint32_t crc, const uint8_t *p, size_t len)
{
	static uint32_t table[256];

	if (!table[1])
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;

			for (int k = 0; k < 8; k++)
				c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
			table[i] = c;
		}
	while (len--)
		crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

#ifdef __x86_64__
/* SSE4.2's crc32 computes the same CRC-32C eight bytes per instruction, several times as fast
 * as the table: every frame, a MapBatch's of some 5 KiB too, is checksummed before its reply
 * goes. */
__attribute__((target("sse4.2"))) static uint32_t
crc32c_by_instruction(uint32_t crc, const uint8_t *p, size_t len)
{
	uint64_t wide = crc, word;

	for (; len >= sizeof(word); p += sizeof(word), len -= sizeof(word)) {
		memcpy(&word, p, sizeof(word));
		wide = __builtin_ia32_crc32di(wide, word);
	}
	crc = (uint32_t)wide;
	while (len--)
		crc = __builtin_ia32_crc32qi(crc, *p++);
	return crc;
}
#endif

/* The instruction where the CPU has it; IOMMUD_TEST_CRC32C_TABLE=1 makes a test check the
 * table. */
static uint32_t (*crc32c_update(void))(uint32_t, const uint8_t *, size_t)
{
	static uint32_t (*update)(uint32_t, const uint8_t *, size_t);

	if (update)
		return update;
	update = crc32c_by_table;
#ifdef __x86_64__
	if (__builtin_cpu_supports("sse4.2") && !getenv("IOMMUD_TEST_CRC32C_TABLE"))
		update = crc32c_by_instruction;
#endif
	return update;
}

uint32_t record_crc32c(const void *data, size_t len)
{
	return ~crc32c_update()(~0u, data, len);
}

static struct record_header *header(const struct record *rec)
{
	return (struct record_header *)rec->base;
}

int record_create(uint64_t generation, struct record *ret_rec)
{
	struct record rec = {.size = RECORD_STEP, .generation = generation};
	struct record_header *h;

	rec.fd = own_memfd("iommud-state");
	if (rec.fd < 0)
		return fail(-errno, "cannot create a state record: %s", strerror(errno));
	if (ftruncate(rec.fd, (off_t)rec.size) < 0 ||
	    (rec.base = mmap(NULL, RECORD_RESERVE, PROT_READ | PROT_WRITE, MAP_SHARED, rec.fd,
			     0)) == MAP_FAILED) {
		int saved = errno;

		(void)close(rec.fd);
		return fail(-saved, "cannot size or map a state record: %s", strerror(saved));
	}
	h = header(&rec);
	memcpy(h->magic, RECORD_MAGIC, sizeof(h->magic));
	h->version = STATE_RECORD_VERSION;
	h->header_size = sizeof(*h);
	h->generation = generation;
	h->header_crc = record_crc32c(h, offsetof(struct record_header, header_crc));
	(void)snprintf(rec.name, sizeof(rec.name), STATE_RECORD_PREFIX "%llu",
		       (unsigned long long)generation);
	*ret_rec = rec;
	return 0;
}

uint64_t record_committed(const struct record *rec)
{
	return __atomic_load_n(&header(rec)->committed, __ATOMIC_ACQUIRE);
}

/* The pages up to end and the rest of its step, allocated and mapped in one call rather than
 * at a page fault each while frames are written before their replies; memory the daemon cannot
 * have is then said here rather than met at a write. A kernel before 5.14 does not know the
 * advice: its pages come at the faults. */
static int populate(struct record *rec, uint64_t end)
{
	uint64_t to = (end + RECORD_STEP - 1) / RECORD_STEP * RECORD_STEP;

	if (to > rec->size)
		to = rec->size;
	if (madvise(rec->base + rec->populated, to - rec->populated, MADV_POPULATE_WRITE) < 0 &&
	    errno != EINVAL)
		return fail(-errno, "cannot allocate the state record's memory: %s",
			    strerror(errno));
	rec->populated = to;
	return 0;
}

static int record_reserve(struct record *rec, uint64_t end)
{
	uint64_t size = rec->size;

	if (end > size) {
		while (size < end)
			size *= 2;
		if (size > RECORD_RESERVE)
			return fail(-ENOSPC, "the state record would pass %llu bytes",
				    (unsigned long long)RECORD_RESERVE);
		if (ftruncate(rec->fd, (off_t)size) < 0)
			return fail(-errno, "cannot grow the state record: %s", strerror(errno));
		rec->size = size;
	}
	return end <= rec->populated ? 0 : populate(rec, end);
}

int record_append(struct record *rec, const Iommud__State__V1__Transaction *txn)
{
	uint64_t at = sizeof(struct record_header) + record_committed(rec);
	size_t len = iommud__state__v1__transaction__get_packed_size(txn);
	uint32_t head[2];
	int rc;

	if (len > UINT32_MAX)
		return fail(-EFBIG, "a state transaction of %zu bytes is too large", len);
	if ((rc = record_reserve(rec, at + FRAME_HEAD + len)) < 0)
		return rc;
	(void)iommud__state__v1__transaction__pack(txn, rec->base + at + FRAME_HEAD);
	head[0] = htole32((uint32_t)len);
	head[1] = htole32(record_crc32c(rec->base + at + FRAME_HEAD, len));
	memcpy(rec->base + at, head, sizeof(head));
	/* The commit: everything above is written before the length that makes it count. */
	__atomic_store_n(&header(rec)->committed,
			 at + FRAME_HEAD + len - sizeof(struct record_header), __ATOMIC_RELEASE);
	return 0;
}

void record_close(struct record *rec)
{
	if (rec->base)
		(void)munmap(rec->base, RECORD_RESERVE);
	if (rec->fd >= 0)
		(void)close(rec->fd);
	*rec = (struct record){.fd = -1};
}

/* Why the header at base (size bytes in all) is refused; 0 when it is sound. */
static int check_header(const struct record_header *h, uint64_t size)
{
	if (size < sizeof(*h) || memcmp(h->magic, RECORD_MAGIC, sizeof(h->magic)) != 0)
		return fail(-EINVAL, "it is not an iommud state record (%llu bytes, no header)",
			    (unsigned long long)size);
	if (h->header_crc != record_crc32c(h, offsetof(struct record_header, header_crc)))
		return fail(-EBADMSG, "its header is damaged (checksum mismatch)");
	if (h->version != STATE_RECORD_VERSION || h->header_size != sizeof(*h))
		return fail(-EPROTONOSUPPORT,
			    "it is of format version %u, and this daemon reads version %d only",
			    h->version, STATE_RECORD_VERSION);
	if (h->committed > size - sizeof(*h))
		return fail(-EBADMSG,
			    "it is truncated: %llu bytes of transactions committed, %llu there",
			    (unsigned long long)h->committed,
			    (unsigned long long)(size - sizeof(*h)));
	return 0;
}

/* The frame at off of the committed bytes p[0, end), unpacked; *off moves past it. */
static int read_frame(const uint8_t *p, uint64_t end, uint64_t *off,
		      Iommud__State__V1__Transaction **ret_txn)
{
	uint32_t head[2];
	Iommud__State__V1__Transaction *txn;

	if (end - *off < FRAME_HEAD)
		return fail(-EBADMSG, "a frame header at byte %llu is cut short",
			    (unsigned long long)*off);
	memcpy(head, p + *off, sizeof(head));
	head[0] = le32toh(head[0]);
	if (head[0] > end - *off - FRAME_HEAD)
		return fail(-EBADMSG, "the frame at byte %llu claims %u bytes past the end",
			    (unsigned long long)*off, head[0]);
	if (le32toh(head[1]) != record_crc32c(p + *off + FRAME_HEAD, head[0]))
		return fail(-EBADMSG, "the frame at byte %llu is damaged (checksum mismatch)",
			    (unsigned long long)*off);
	txn = iommud__state__v1__transaction__unpack(NULL, head[0], p + *off + FRAME_HEAD);
	if (!txn)
		return fail(-EBADMSG, "the frame at byte %llu is not a state transaction",
			    (unsigned long long)*off);
	*off += FRAME_HEAD + head[0];
	*ret_txn = txn;
	return 0;
}

static int read_frames(const uint8_t *p, uint64_t end, Iommud__State__V1__Transaction ***ret_txns,
		       size_t *ret_n)
{
	Iommud__State__V1__Transaction **txns = NULL, **grown;
	size_t n = 0, cap = 0;
	uint64_t off = 0;
	int rc = 0;

	while (off < end && rc == 0) {
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			grown = realloc(txns, cap * sizeof(*txns));
			if (!grown) {
				rc = fail(-ENOMEM, "out of memory reading the state record");
				break;
			}
			txns = grown;
		}
		if ((rc = read_frame(p, end, &off, &txns[n])) == 0)
			n++;
	}
	if (rc < 0) {
		record_free_transactions(txns, n);
		return rc;
	}
	*ret_txns = txns;
	*ret_n = n;
	return 0;
}

int record_read(int fd, uint64_t *ret_generation, Iommud__State__V1__Transaction ***ret_txns,
		size_t *ret_n)
{
	const struct record_header *h;
	struct stat st;
	void *p;
	int rc;

	if (fstat(fd, &st) < 0)
		return fail(-errno, "cannot read it: %s", strerror(errno));
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(*h))
		return fail(-EINVAL, "it is not an iommud state record (%lld bytes, no header)",
			    (long long)st.st_size);
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return fail(-errno, "cannot map it: %s", strerror(errno));
	h = p;
	rc = check_header(h, (uint64_t)st.st_size);
	if (rc == 0)
		rc = read_frames((const uint8_t *)p + sizeof(*h), h->committed, ret_txns, ret_n);
	if (rc == 0)
		*ret_generation = h->generation;
	(void)munmap(p, (size_t)st.st_size);
	return rc;
}

void record_free_transactions(Iommud__State__V1__Transaction **txns, size_t n)
{
	for (size_t i = 0; i < n; i++)
		iommud__state__v1__transaction__free_unpacked(txns[i], NULL);
	free(txns);
}
