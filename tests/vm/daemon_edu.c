// SPDX-License-Identifier: MIT
#include "daemon_edu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iommuctl.h>

#include "edu.h"

void check_call(struct iommuctl *c, int rc, const char *what)
{
	if (rc < 0) {
		(void)fprintf(stderr, "%s failed: %s\n", what, iommuctl_last_error(c));
		abort();
	}
}

char *find_edu(struct iommuctl *c)
{
	Iommud__V1__ListDevicesRequest list = IOMMUD__V1__LIST_DEVICES_REQUEST__INIT;
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;
	char *name = NULL;

	req.method_case = IOMMUD__V1__REQUEST__METHOD_LIST_DEVICES;
	req.list_devices = &list;
	check_call(c, iommuctl_call(c, &req, NULL, 0, &resp, NULL, 0, NULL), "ListDevices");
	for (size_t i = 0; i < resp->list_devices->n_devices && !name; i++) {
		const Iommud__V1__Device *d = resp->list_devices->devices[i];

		if (d->vendor == EDU_VENDOR && d->device == EDU_DEVICE)
			name = strdup(d->name);
	}
	iommuctl_response_free(resp);
	return name;
}
