/* SPDX-License-Identifier: MIT */
/*
 * The state record's bytes (state.h): a memfd holding a header and frames, each frame a
 * little-endian u32 length, a u32 CRC-32C of the payload and one iommud.state.v1.Transaction.
 * The header's committed length says how many frame bytes count; what lies beyond it was never
 * acknowledged and is ignored.
 *
 * Ownership: a struct record owns its memfd and its mapping; record_read's transactions belong
 * to the caller (record_free_transactions).
 */
#ifndef IOMMUD_STATE_RECORD_H
#define IOMMUD_STATE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include <state.pb-c.h>

/* The record format this daemon writes and reads; any other is refused. */
#define STATE_RECORD_VERSION 1
/* "state.<generation>": the record's name in the descriptor store. */
#define STATE_RECORD_PREFIX "state."

#define RECORD_MAGIC "IOMMUDst"

/* At the start of the memfd, in the daemon's byte order (a record never leaves the machine). */
struct record_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint64_t generation;
	uint32_t header_crc; /* CRC-32C of the fields above */
	uint32_t reserved;
	uint64_t committed; /* frame bytes that count; stored last, in one aligned store */
};

/* CRC-32C (Castagnoli), as the header and the frames carry it. */
uint32_t record_crc32c(const void *data, size_t len);

struct record {
	int fd;
	uint8_t *base;	    /* the memfd's shared mapping, reserved large; size bytes exist */
	uint64_t size;	    /* of the memfd */
	uint64_t populated; /* bytes from the start whose pages are allocated and mapped */
	uint64_t generation;
	char name[32]; /* in the store */
};

/* A new, empty record of this generation, not yet stored. */
int record_create(uint64_t generation, struct record *ret_rec);
/* Appends the transaction and commits it: on return it counts. */
int record_append(struct record *rec, const Iommud__State__V1__Transaction *txn);
/* Frame bytes committed. */
uint64_t record_committed(const struct record *rec);
void record_close(struct record *rec);

/* Reads the record in fd (a handed one), all of it checked before anything is returned: its
 * generation and transactions, or a negative errno with why it is refused (fail()). */
int record_read(int fd, uint64_t *ret_generation, Iommud__State__V1__Transaction ***ret_txns,
		size_t *ret_n);
void record_free_transactions(Iommud__State__V1__Transaction **txns, size_t n);

#endif
