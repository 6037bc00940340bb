// SPDX-License-Identifier: MIT
/*
 * The name tables of proto/names.h: the names people type in configuration files and on
 * iommuctl's command line are the schema's value names, and each converts back to its value.
 */
#include <errno.h>
#include <string.h>

#include <names.h>

#include "harness.h"

/* Each value of an enum, in the schema's order, with the name people use for it. */
struct expected_name {
	int value;
	const char *name;
};

static void check_round_trips(struct iommud_names *names, const struct expected_name *expected,
			      size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int value = -1;

		CHECK(iommud_name(names, expected[i].value));
		CHECK(strcmp(iommud_name(names, expected[i].value), expected[i].name) == 0);
		CHECK_OK(iommud_value(names, expected[i].name, &value));
		CHECK_EQ(value, expected[i].value);
	}
}

TEST(domain_types)
{
	static const struct expected_name expected[] = {
		{IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_BLOCKED, "blocked"},
		{IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_IDENTITY, "identity"},
		{IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_PAGING, "paging"},
		{IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED, "nested"},
	};

	check_round_trips(&iommud_domain_type_names, expected,
			  sizeof(expected) / sizeof(expected[0]));
}

TEST(backends)
{
	static const struct expected_name expected[] = {
		{IOMMUD__V1__BACKEND__BACKEND_EMULATED, "emulated"},
		{IOMMUD__V1__BACKEND__BACKEND_IOMMUFD, "iommufd"},
		{IOMMUD__V1__BACKEND__BACKEND_VFIO_TYPE1, "vfio_type1"},
	};

	check_round_trips(&iommud_backend_names, expected, sizeof(expected) / sizeof(expected[0]));
}

TEST(access_levels)
{
	static const struct expected_name expected[] = {
		{IOMMUD__V1__ACCESS__ACCESS_NONE, "none"},
		{IOMMUD__V1__ACCESS__ACCESS_READ, "read"},
		{IOMMUD__V1__ACCESS__ACCESS_WRITE, "write"},
	};

	check_round_trips(&iommud_access_names, expected, sizeof(expected) / sizeof(expected[0]));
}

/* "unspecified" is the schema's zero, never something a person may ask for. */
TEST(unspecified_is_no_choice)
{
	int value = 42;

	CHECK(strcmp(iommud_name(&iommud_domain_type_names, 0), "unspecified") == 0);
	CHECK_EQ(iommud_value(&iommud_domain_type_names, "unspecified", &value), -EINVAL);
	CHECK_EQ(iommud_value(&iommud_backend_names, "unspecified", &value), -EINVAL);
	CHECK_EQ(value, 42);
}

/* A wrong or differently spelled name is refused and the output left alone. */
TEST(unknown_names_refused)
{
	int value = 42;

	CHECK_EQ(iommud_value(&iommud_domain_type_names, "Paging", &value), -EINVAL);
	CHECK_EQ(iommud_value(&iommud_domain_type_names, "DOMAIN_TYPE_PAGING", &value), -EINVAL);
	CHECK_EQ(iommud_value(&iommud_backend_names, "", &value), -EINVAL);
	CHECK_EQ(iommud_value(&iommud_access_names, "admin", &value), -EINVAL);
	CHECK_EQ(value, 42);
	CHECK(iommud_name(&iommud_domain_type_names, 99) == NULL);
	CHECK(iommud_name(&iommud_access_names, -1) == NULL);
}

/* The list error messages offer, in the schema's order; a short buffer is cut, not overrun. */
TEST(choices_listed)
{
	char buf[64], tiny[8];

	CHECK(strcmp(iommud_names_list(&iommud_domain_type_names, buf, sizeof(buf)),
		     "blocked, identity, paging or nested") == 0);
	CHECK(strcmp(iommud_names_list(&iommud_backend_names, buf, sizeof(buf)),
		     "emulated, iommufd or vfio_type1") == 0);
	CHECK(strcmp(iommud_names_list(&iommud_access_names, buf, sizeof(buf)),
		     "none, read or write") == 0);
	memset(tiny, 'x', sizeof(tiny));
	CHECK_EQ(strlen(iommud_names_list(&iommud_domain_type_names, tiny, sizeof(tiny))),
		 sizeof(tiny) - 1);
}
