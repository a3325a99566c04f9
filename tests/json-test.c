/* nbdkit-fleece: unit test of the JSON writer (common/json.c).
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Writes strings that need escaping and members of every type into
 * a buffer and compares the text with what JSON requires.  Exits 0
 * if all match, 1 (after printing what differed) otherwise.
 */

#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "json.h"

static int failures;

/* Compare GOT with WANT, counting and printing a difference. */
static void
expect (const char *what, const char *got, const char *want)
{
  if (strcmp (got, want) != 0) {
    fprintf (stderr, "json-test: %s: got '%s', want '%s'\n",
             what, got, want);
    failures++;
  }
}

/* Escaping: quotes, backslash, control bytes and bytes above ASCII. */
static void
test_escaping (void)
{
  char buf[256];
  FILE *fp = json_buffer_open (buf, sizeof buf);

  json_string (fp, "a\"b\\c\n\t\x01\x7f\xc3\xa9/");
  json_buffer_close (fp, buf, sizeof buf);
  expect ("escaping", buf,
          "\"a\\\"b\\\\c\\u000a\\u0009\\u0001\\u007f\\u00c3\\u00a9/\"");

  fp = json_buffer_open (buf, sizeof buf);
  json_string (fp, NULL);
  json_buffer_close (fp, buf, sizeof buf);
  expect ("NULL string", buf, "null");
}

/* Members of each type, a nested object and an array. */
static void
test_members (void)
{
  char buf[512];
  struct json_writer w, o, a;
  FILE *fp = json_buffer_open (buf, sizeof buf);

  json_begin (&w, fp);
  json_member_string (&w, "s", "x\"y");
  json_member_int (&w, "i", INT64_MIN);
  json_member_uint (&w, "u", UINT64_MAX);
  json_member_bool (&w, "t", true);
  json_member_bool (&w, "f", false);
  json_member_null (&w, "n");
  json_member_double (&w, "d", 0.25);
  json_member_fixed (&w, "x", 3, 1.5);
  json_member_raw (&w, "r", "{\"k\":1}");
  json_key (&w, "o");
  json_begin (&o, fp);
  json_member_uint (&o, "a", 1);
  json_end (&o);
  json_key (&w, "l");
  json_begin_array (&a, fp);
  json_element (&a);
  json_string (fp, "p");
  json_element (&a);
  json_string (fp, "q");
  json_end_array (&a);
  json_end (&w);
  json_buffer_close (fp, buf, sizeof buf);
  expect ("members", buf,
          "{\"s\":\"x\\\"y\",\"i\":-9223372036854775808,"
          "\"u\":18446744073709551615,\"t\":true,\"f\":false,"
          "\"n\":null,\"d\":0.25,\"x\":1.500,\"r\":{\"k\":1},"
          "\"o\":{\"a\":1},\"l\":[\"p\",\"q\"]}");

  /* Members added after others: a comma first. */
  fp = json_buffer_open (buf, sizeof buf);
  json_init (&w, fp, true);
  json_member_uint (&w, "a", 1);
  json_buffer_close (fp, buf, sizeof buf);
  expect ("continued", buf, ",\"a\":1");
}

/* A buffer too small: cut short but NUL-terminated. */
static void
test_truncation (void)
{
  char buf[8];
  FILE *fp = json_buffer_open (buf, sizeof buf);

  json_string (fp, "0123456789");
  json_buffer_close (fp, buf, sizeof buf);
  if (strlen (buf) >= sizeof buf) {
    fprintf (stderr, "json-test: truncation: not NUL-terminated\n");
    failures++;
  }
  expect ("truncation", buf, "\"012345");
}

int
main (void)
{
  test_escaping ();
  test_members ();
  test_truncation ();
  return failures ? 1 : 0;
}
