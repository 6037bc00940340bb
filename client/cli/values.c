/* SPDX-License-Identifier: MIT */
/* iommuctl's arguments and the names of values: see cli.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <names.h>

#include "cli.h"
#include "output.h"

bool parse_u64(const char *s, bool sized, uint64_t *ret)
{
	static const char suffixes[] = "KMGT";
	bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
	unsigned long long v;
	const char *unit;
	char *end;

	/* strtoull would take a sign or leading blanks too. */
	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, hex ? 16 : 10);
	if (errno || end == s)
		return false;
	if (sized && *end && (unit = strchr(suffixes, *end & ~0x20)) && !end[1]) {
		unsigned shift = 10 * (unsigned)(unit - suffixes + 1);

		if (v > UINT64_MAX >> shift)
			return false;
		v <<= shift;
		end++;
	}
	if (*end)
		return false;
	*ret = v;
	return true;
}

uint32_t arg_domain(const struct cmd_entry *cmd, const char *s)
{
	uint64_t v;

	if (!parse_u64(s, false, &v) || v > UINT32_MAX)
		usage_error(cmd->name, "'%s' is not a domain id; 'iommuctl domains' lists them", s);
	return (uint32_t)v;
}

const char *domain_type_name(Iommud__V1__DomainType type)
{
	const char *name = iommud_name(&iommud_domain_type_names, (int)type);

	return name ? name : "unknown";
}

/* A nested domain needs a parent and the IOMMU's own stage-1 data, which 'domain alloc' does
 * not take: its name is known but not allocatable from here. */
bool domain_type_from_name(const char *name, enum iommuctl_domain_type *ret_type)
{
	int type;

	if (iommud_value(&iommud_domain_type_names, name, &type) < 0 ||
	    type == IOMMUD__V1__DOMAIN_TYPE__DOMAIN_TYPE_NESTED)
		return false;
	*ret_type = (enum iommuctl_domain_type)type; /* the library's values are the schema's */
	return true;
}

const char *prot_name(uint32_t prot)
{
	static const char *const names[] = {"--", "r-", "-w", "rw"};

	return names[prot & 3];
}

bool prot_from_name(const char *name, uint32_t *ret_prot)
{
	uint32_t prot = (strchr(name, 'r') ? IOMMUCTL_PROT_READ : 0) |
			(strchr(name, 'w') ? IOMMUCTL_PROT_WRITE : 0);

	if (!prot || name[strspn(name, "rw")] || strlen(name) > 2)
		return false;
	*ret_prot = prot;
	return true;
}
