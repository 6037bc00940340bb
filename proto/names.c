// SPDX-License-Identifier: MIT
#include "names.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define VALUES_MAX 16
#define NAME_CHARS 32

struct iommud_names {
	const ProtobufCEnumDescriptor *desc;
	char name[VALUES_MAX][NAME_CHARS]; /* by position in desc->values */
};

struct iommud_names iommud_access_names = {.desc = &iommud__v1__access__descriptor};
struct iommud_names iommud_backend_names = {.desc = &iommud__v1__backend__descriptor};
struct iommud_names iommud_domain_type_names = {.desc = &iommud__v1__domain_type__descriptor};
struct iommud_names iommud_probe_tier_names = {.desc = &iommud__v1__probe_tier__descriptor};
struct iommud_names iommud_map_op_names = {.desc = &iommud__v1__map_op__descriptor};
struct iommud_names iommud_map_layer_names = {.desc = &iommud__v1__map_layer__descriptor};
struct iommud_names iommud_size_class_names = {.desc = &iommud__v1__size_class__descriptor};

static pthread_once_t tables_built = PTHREAD_ONCE_INIT;

/* The prefix protobuf style gives the values of an enum: "DomainType" gives "DOMAIN_TYPE_". */
static size_t value_prefix(const char *enum_name, char *buf, size_t size)
{
	size_t n = 0;

	for (const char *c = enum_name; *c && n + 3 < size; c++) {
		if (c != enum_name && isupper((unsigned char)*c))
			buf[n++] = '_';
		buf[n++] = (char)toupper((unsigned char)*c);
	}
	buf[n++] = '_';
	buf[n] = '\0';
	return n;
}

static void build_table(struct iommud_names *names)
{
	char prefix[NAME_CHARS];
	size_t skip = value_prefix(names->desc->short_name, prefix, sizeof(prefix));

	for (unsigned i = 0; i < names->desc->n_values && i < VALUES_MAX; i++) {
		const char *full = names->desc->values[i].name;
		const char *rest = strncmp(full, prefix, skip) == 0 ? full + skip : full;
		size_t n;

		for (n = 0; rest[n] && n + 1 < NAME_CHARS; n++)
			names->name[i][n] = (char)tolower((unsigned char)rest[n]);
		names->name[i][n] = '\0';
	}
}

static void build_tables(void)
{
	build_table(&iommud_access_names);
	build_table(&iommud_backend_names);
	build_table(&iommud_domain_type_names);
	build_table(&iommud_probe_tier_names);
	build_table(&iommud_map_op_names);
	build_table(&iommud_map_layer_names);
	build_table(&iommud_size_class_names);
}

/* The values a person may choose: all but an enum's unspecified zero. */
static bool is_choice(const struct iommud_names *names, unsigned index)
{
	return index < VALUES_MAX && strcmp(names->name[index], "unspecified") != 0;
}

const char *iommud_name(struct iommud_names *names, int value)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(names->desc, value);
	size_t index;

	(void)pthread_once(&tables_built, build_tables);
	if (!v)
		return NULL;
	index = (size_t)(v - names->desc->values);
	return index < VALUES_MAX ? names->name[index] : NULL;
}

int iommud_value(struct iommud_names *names, const char *name, int *ret_value)
{
	(void)pthread_once(&tables_built, build_tables);
	for (unsigned i = 0; i < names->desc->n_values; i++) {
		if (is_choice(names, i) && strcmp(names->name[i], name) == 0) {
			*ret_value = names->desc->values[i].value;
			return 0;
		}
	}
	return -EINVAL;
}

const char *iommud_names_list(struct iommud_names *names, char *buf, size_t size)
{
	unsigned choices = 0, listed = 0;
	size_t used = 0;

	(void)pthread_once(&tables_built, build_tables);
	for (unsigned i = 0; i < names->desc->n_values; i++)
		choices += is_choice(names, i);
	buf[0] = '\0';
	for (unsigned i = 0; i < names->desc->n_values && used < size; i++) {
		if (!is_choice(names, i))
			continue;
		listed++;
		used += (size_t)snprintf(buf + used, size - used, "%s%s",
					 listed == 1	     ? ""
					 : listed == choices ? " or "
							     : ", ",
					 names->name[i]);
	}
	return buf;
}
