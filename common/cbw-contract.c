/* nbdkit-fleece: the parser of cbw's status record.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The record is a flat JSON object written by cbw (see
 * cbw-contract.h), so this reads exactly that: an object of members
 * whose values are strings, numbers, true, false or null, and nothing
 * nested.  Anything else is refused with a message saying where.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbw-contract.h"

/* Where a member's value goes. */
enum kind { K_UINT, K_U64, K_STRING, K_BOOL };

struct member {
  const char *name;
  enum kind kind;
  size_t offset;                /* in struct cbw_status_record */
  size_t size;                  /* K_STRING: room, with the NUL */
};

#define M(name, kind, field)                                    \
  { name, kind, offsetof (struct cbw_status_record, field),     \
    sizeof ((struct cbw_status_record *) 0)->field }

/* The members this build understands; others are skipped. */
static const struct member members[] = {
  M ("version",           K_UINT,   version),
  M ("state",             K_STRING, state),
  M ("generation",        K_U64,    generation),
  M ("cluster_size",      K_U64,    cluster_size),
  M ("disk_size",         K_U64,    disk_size),
  M ("preserved_bytes",   K_U64,    preserved_bytes),
  M ("copied_bytes",      K_U64,    copied_bytes),
  M ("released_bytes",    K_U64,    released_bytes),
  M ("cbw_failures",      K_U64,    cbw_failures),
  M ("broken",            K_BOOL,   broken),
  M ("snapshot_contexts", K_U64,    snapshot_contexts),
};

/* A parse in progress. */
struct parser {
  const char *start, *p;
  char *err;
  size_t errlen;
};

/* Fail with "WHAT at byte N". */
static int
fail (struct parser *ps, const char *what)
{
  snprintf (ps->err, ps->errlen, "%s at byte %td of the cbw status",
            what, ps->p - ps->start);
  return -1;
}

static void
skip_blanks (struct parser *ps)
{
  while (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\t' ||
         *ps->p == '\r')
    ps->p++;
}

/* Expect the character C (after blanks). */
static int
expect (struct parser *ps, char c)
{
  char what[32];

  skip_blanks (ps);
  if (*ps->p != c) {
    snprintf (what, sizeof what, "expected '%c'", c);
    return fail (ps, what);
  }
  ps->p++;
  return 0;
}

/* A JSON string into OUT (of SIZE bytes, NUL-terminated; OUT may be
 * NULL to skip it).  Only the escapes of one character are accepted:
 * the record has no others.
 */
static int
parse_string (struct parser *ps, char *out, size_t size)
{
  static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
  size_t n = 0;

  if (expect (ps, '"') == -1)
    return -1;
  while (*ps->p != '"') {
    char c = *ps->p++;
    const char *e;

    if (c == '\0' || (unsigned char) c < 0x20)
      return fail (ps, "unterminated string");
    if (c == '\\') {
      e = *ps->p ? strchr (from, *ps->p) : NULL;
      if (e == NULL)
        return fail (ps, "unsupported escape in string");
      c = to[e - from];
      ps->p++;
    }
    if (out && n + 1 >= size)
      return fail (ps, "string too long");
    if (out)
      out[n++] = c;
  }
  ps->p++;
  if (out)
    out[n] = '\0';
  return 0;
}

/* A non-negative integer. */
static int
parse_u64 (struct parser *ps, uint64_t *ret)
{
  char *end;

  skip_blanks (ps);
  if (*ps->p < '0' || *ps->p > '9')
    return fail (ps, "expected a non-negative integer");
  errno = 0;
  *ret = strtoull (ps->p, &end, 10);
  if (errno)
    return fail (ps, "integer out of range");
  ps->p = end;
  return 0;
}

/* A scalar we do not keep: string, number, true, false or null. */
static int
skip_value (struct parser *ps)
{
  static const char *const words[] = { "true", "false", "null" };
  size_t i;

  skip_blanks (ps);
  if (*ps->p == '"')
    return parse_string (ps, NULL, 0);
  if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
    ps->p += strspn (ps->p, "-+.eE0123456789");
    return 0;
  }
  for (i = 0; i < sizeof words / sizeof words[0]; ++i)
    if (strncmp (ps->p, words[i], strlen (words[i])) == 0) {
      ps->p += strlen (words[i]);
      return 0;
    }
  return fail (ps, "expected a string, number, true, false or null");
}

/* The value of member M into REC. */
static int
parse_value (struct parser *ps, const struct member *m,
             struct cbw_status_record *rec)
{
  char *field = (char *) rec + m->offset;
  uint64_t u;

  switch (m->kind) {
  case K_STRING:
    return parse_string (ps, field, m->size);
  case K_U64:
    return parse_u64 (ps, (uint64_t *) field);
  case K_UINT:
    if (parse_u64 (ps, &u) == -1)
      return -1;
    if (u > 0xffff)
      return fail (ps, "value out of range");
    *(unsigned *) field = u;
    return 0;
  case K_BOOL:
    skip_blanks (ps);
    if (strncmp (ps->p, "true", 4) == 0 ||
        strncmp (ps->p, "false", 5) == 0) {
      *(bool *) field = *ps->p == 't';
      ps->p += *ps->p == 't' ? 4 : 5;
      return 0;
    }
    return fail (ps, "expected true or false");
  }
  abort ();
}

/* One "name":value member. */
static int
parse_member (struct parser *ps, struct cbw_status_record *rec,
              bool first)
{
  char name[64];
  size_t i;

  if (parse_string (ps, name, sizeof name) == -1 || expect (ps, ':') == -1)
    return -1;
  if (first && strcmp (name, "version") != 0)
    return fail (ps, "the first member is not \"version\"");
  for (i = 0; i < sizeof members / sizeof members[0]; ++i)
    if (strcmp (name, members[i].name) == 0)
      return parse_value (ps, &members[i], rec);
  return skip_value (ps);
}

int
cbw_status_parse (const char *line, struct cbw_status_record *rec,
                  char *err, size_t errlen)
{
  struct parser ps = { .start = line, .p = line, .err = err,
                       .errlen = errlen };
  bool first = true;

  memset (rec, 0, sizeof *rec);
  if (expect (&ps, '{') == -1)
    return -1;
  skip_blanks (&ps);
  while (*ps.p != '}') {
    if (!first && expect (&ps, ',') == -1)
      return -1;
    skip_blanks (&ps);
    if (parse_member (&ps, rec, first) == -1)
      return -1;
    if (first && rec->version != CBW_STATUS_VERSION) {
      snprintf (err, errlen, "cbw status record version %u, but this "
                "build reads version %d: use matching builds of the "
                "filters", rec->version, CBW_STATUS_VERSION);
      return -1;
    }
    first = false;
    skip_blanks (&ps);
  }
  ps.p++;
  skip_blanks (&ps);
  if (first)
    return fail (&ps, "no \"version\" member");
  if (*ps.p != '\0')
    return fail (&ps, "text after the record");
  return 0;
}
