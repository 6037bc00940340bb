/* SPDX-License-Identifier: MIT */
/*
 * The numbers of protocol version 1 that the schema cannot say (docs/protocol.md, "Framing"):
 * what the daemon announces in HelloReply and enforces, and what libiommuctl holds itself to.
 * Installed with libiommuctl, whose IOMMUCTL_* names are these values.
 */
#ifndef IOMMUD_PROTOCOL_H
#define IOMMUD_PROTOCOL_H

/* Bumped only by an incompatible change (docs/protocol.md, "Versioning"). */
#define IOMMUD_PROTOCOL_VERSION 1
/* Bytes of one packed Request or Response, that is of one packet. */
#define IOMMUD_MAX_MESSAGE 65536
/* Descriptors (SCM_RIGHTS) carried by one packet. */
#define IOMMUD_MAX_FDS 32
/* Descriptors one connection may keep for its maps (KeepFiles): slots 0 to this less one. */
#define IOMMUD_KEPT_FILES 8
/* A Histogram's buckets (iommud.proto): the last, this index, holds everything from
 * 2^IOMMUD_HISTOGRAM_OPEN_BUCKET ns (about 69 s) up, so it has no upper bound. */
#define IOMMUD_HISTOGRAM_OPEN_BUCKET 36

#endif
