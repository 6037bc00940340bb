/* SPDX-License-Identifier: MIT */
/*
 * The one spelling of each name people read and write for the schema's enums: access levels
 * (configuration files, HelloReply.permissions), backends (configuration, command lines) and
 * domain types (iommuctl). A name is derived from the schema, not typed again: the value's name
 * without the prefix its enum gives every value, in lower case, so DOMAIN_TYPE_PAGING is
 * "paging", BACKEND_IOMMUFD "iommufd" and ACCESS_WRITE "write". A value added to the schema
 * gets its name, its parsing and its place in messages with no other change.
 *
 * The value 0 of an enum whose name ends in UNSPECIFIED has the name "unspecified" but is no
 * choice: iommud_value refuses it and iommud_names_list leaves it out.
 *
 * Ownership: the tables are static and built once (thread-safely) on first use; every string
 * returned lives as long as the program.
 */
#ifndef IOMMUD_NAMES_H
#define IOMMUD_NAMES_H

#include <stddef.h>

#include <iommud.pb-c.h>

/* One enum of the schema with the names of its values. */
struct iommud_names;

extern struct iommud_names iommud_access_names;	     /* Access */
extern struct iommud_names iommud_backend_names;     /* Backend */
extern struct iommud_names iommud_domain_type_names; /* DomainType */
extern struct iommud_names iommud_probe_tier_names;  /* ProbeTier */
extern struct iommud_names iommud_map_op_names;	     /* MapOp */
extern struct iommud_names iommud_map_layer_names;   /* MapLayer */
extern struct iommud_names iommud_size_class_names;  /* SizeClass */

/* The name of value; NULL when the enum has no such value. */
const char *iommud_name(struct iommud_names *names, int value);
/* The value called name; -EINVAL when no value is (or when it names the unspecified one). */
int iommud_value(struct iommud_names *names, const char *name, int *ret_value);
/* Writes the names of the enum's choices as "a, b or c" into buf, for messages; returns buf. */
const char *iommud_names_list(struct iommud_names *names, char *buf, size_t size);

#endif
