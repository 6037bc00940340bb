/* SPDX-License-Identifier: MIT */
/* iommuctl's connection to iommud: see cli.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "output.h"

struct cli cli;
static struct iommuctl *conn; /* made on first use */

int cli_check(int err)
{
	Iommud__V1__Code code = iommuctl_last_code(conn);

	if (err >= 0)
		return err;
	if (code != IOMMUD__V1__CODE__CODE_OK)
		fail(EXIT_REFUSED, "%s: %s", iommuctl_code_name(code), iommuctl_last_error(conn));
	fail(EXIT_TRANSPORT, "%s", iommuctl_last_error(conn));
}

/* Every command says Hello first: it picks the session of --lease, and hello shows the reply. */
struct iommuctl *cli_connection(void)
{
	if (conn)
		return conn;
	if (iommuctl_connect(cli.socket, &conn) < 0)
		fail(EXIT_TRANSPORT, "%s", iommuctl_last_error(NULL));
	if (cli.reconnect_set)
		iommuctl_set_reconnect(conn, cli.reconnect_ms);
	cli_check(iommuctl_hello(conn, "iommuctl", cli.lease, &cli.hello));
	return conn;
}

void cli_disconnect(void)
{
	if (cli.hello)
		iommud__v1__hello_reply__free_unpacked(cli.hello, NULL);
	iommuctl_close(conn);
}

Iommud__V1__Response *cli_call(Iommud__V1__Request__MethodCase method, void *msg)
{
	Iommud__V1__Request req = IOMMUD__V1__REQUEST__INIT;
	Iommud__V1__Response *resp;

	req.method_case = method;
	/* Every member of the oneof is a message pointer in the same place; the case says which. */
	req.hello = msg;
	cli_check(iommuctl_call(cli_connection(), &req, NULL, 0, &resp, NULL, 0, NULL));
	return resp;
}

void cli_show(Iommud__V1__Request__MethodCase method, void *msg, cli_show_fn *show)
{
	Iommud__V1__Response *r = cli_call(method, msg);

	if (show)
		show(msg, r);
	else
		out_empty();
	iommuctl_response_free(r);
}

/* Puts the operands into the request's fields that cmd->fields names. */
static void fill_fields(const struct cmd_entry *cmd, const struct cmd_args *args,
			const ProtobufCMessageDescriptor *type, void *msg)
{
	char name[32];
	int i = 0;

	for (const char *w = cmd->fields; w && *w; w += strcspn(w, " "), w += *w == ' ', i++) {
		const ProtobufCFieldDescriptor *f;
		void *at;

		(void)snprintf(name, sizeof(name), "%.*s", (int)strcspn(w, " "), w);
		f = protobuf_c_message_descriptor_get_field_by_name(type, name);
		/* A field that is not there, or of another type, is a mistake in the table. */
		if (!f || (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_UINT32))
			abort();
		at = (char *)msg + f->offset;
		if (f->type == PROTOBUF_C_TYPE_STRING)
			*(char **)at = args->operands[i];
		else
			*(uint32_t *)at = arg_domain(cmd, args->operands[i]);
	}
}

void cli_request(const struct cmd_entry *cmd, const struct cmd_args *args)
{
	/* The method's number in the Request oneof names the field, whose type is the request's. */
	const ProtobufCMessageDescriptor *type =
		protobuf_c_message_descriptor_get_field(&iommud__v1__request__descriptor,
							cmd->method)
			->descriptor;
	void *msg = calloc(1, type->sizeof_message);

	if (!msg)
		fail(EXIT_LOCAL, "out of memory");
	protobuf_c_message_init(type, msg);
	fill_fields(cmd, args, type, msg);
	if (cmd->request)
		cmd->request(cmd, args, msg);
	cli_show(cmd->method, msg, cmd->show);
	/* Its strings are the command line's: only the message itself is ours. */
	free(msg);
}

void cli_broken_reply(Iommud__V1__Response *r, const char *what)
{
	iommuctl_response_free(r);
	fail(EXIT_TRANSPORT, "iommud's reply %s; the daemon is broken", what);
}
