/* nbdkit-fleece: a small JSON writer onto a stdio stream.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "json.h"

/* Print S as a JSON string (see json.h for the escaping). */
void
json_string (FILE *fp, const char *s)
{
  if (s == NULL) {
    fputs ("null", fp);
    return;
  }
  fputc ('"', fp);
  for (; *s; ++s) {
    unsigned char c = *s;

    if (c == '"' || c == '\\')
      fprintf (fp, "\\%c", c);
    else if (c < 32 || c >= 127)
      fprintf (fp, "\\u%04x", c);
    else
      fputc (c, fp);
  }
  fputc ('"', fp);
}

/* Start writing members to FP. */
void
json_init (struct json_writer *w, FILE *fp, bool comma)
{
  w->fp = fp;
  w->comma = comma;
}

/* Write the bracket C that opens an object or an array. */
static void
open_with (struct json_writer *w, FILE *fp, char c)
{
  fputc (c, fp);
  json_init (w, fp, false);
}

/* Write the bracket C that closes it: a value now stands before. */
static void
close_with (struct json_writer *w, char c)
{
  fputc (c, w->fp);
  w->comma = true;
}

/* Open an object. */
void
json_begin (struct json_writer *w, FILE *fp)
{
  open_with (w, fp, '{');
}

/* Close the object. */
void
json_end (struct json_writer *w)
{
  close_with (w, '}');
}

/* Open an array. */
void
json_begin_array (struct json_writer *w, FILE *fp)
{
  open_with (w, fp, '[');
}

/* Close the array. */
void
json_end_array (struct json_writer *w)
{
  close_with (w, ']');
}

/* The separator before an element. */
void
json_element (struct json_writer *w)
{
  if (w->comma)
    fputc (',', w->fp);
  w->comma = true;
}

/* The separator and the member's name. */
void
json_key (struct json_writer *w, const char *name)
{
  if (w->comma)
    fputc (',', w->fp);
  w->comma = true;
  json_string (w->fp, name);
  fputc (':', w->fp);
}

/* A string member (null if S is NULL). */
void
json_member_string (struct json_writer *w, const char *name, const char *s)
{
  json_key (w, name);
  json_string (w->fp, s);
}

/* A signed integer member. */
void
json_member_int (struct json_writer *w, const char *name, int64_t v)
{
  json_key (w, name);
  fprintf (w->fp, "%" PRIi64, v);
}

/* An unsigned integer member. */
void
json_member_uint (struct json_writer *w, const char *name, uint64_t v)
{
  json_key (w, name);
  fprintf (w->fp, "%" PRIu64, v);
}

/* A boolean member. */
void
json_member_bool (struct json_writer *w, const char *name, bool v)
{
  json_key (w, name);
  fputs (v ? "true" : "false", w->fp);
}

/* A null member. */
void
json_member_null (struct json_writer *w, const char *name)
{
  json_key (w, name);
  fputs ("null", w->fp);
}

/* A double member, %.15g. */
void
json_member_double (struct json_writer *w, const char *name, double v)
{
  json_key (w, name);
  fprintf (w->fp, "%.15g", v);
}

/* A double member with DIGITS digits after the point. */
void
json_member_fixed (struct json_writer *w, const char *name, int digits,
                   double v)
{
  json_key (w, name);
  fprintf (w->fp, "%.*f", digits, v);
}

/* A member whose value is already JSON text. */
void
json_member_raw (struct json_writer *w, const char *name, const char *json)
{
  json_key (w, name);
  fputs (json, w->fp);
}

/* A stream that writes into BUF. */
FILE *
json_buffer_open (char *buf, size_t len)
{
  FILE *fp;

  if (len == 0)
    return NULL;
  buf[0] = '\0';
  fp = fmemopen (buf, len, "w");
  return fp;
}

/* End the stream into BUF, NUL-terminated even when cut short. */
void
json_buffer_close (FILE *fp, char *buf, size_t len)
{
  if (fp)
    fclose (fp);
  if (len > 0)
    buf[len - 1] = '\0';
}
