#!/usr/bin/env bash
# nbdkit-fleece: check the manual pages (man/*.pod).
# SPDX-License-Identifier: BSD-3-Clause
#
# For every man/*.pod:
#  - podchecker reports neither errors nor warnings;
#  - outside verbatim paragraphs no line is longer than 76 columns
#    (a line that is only a URL is allowed);
#  - no line ends in whitespace, and there are no tabs;
#  - the required sections are there: NAME, SYNOPSIS, DESCRIPTION,
#    PARAMETERS (plugins and filters), EXAMPLES, SEE ALSO, AUTHORS,
#    COPYRIGHT; and no hand-written BUGS or LICENSE, no =encoding;
#  - NAME reads "PAGE - description" (lower case, no final period),
#    PAGE being the file name;
#  - L<nbdkit-*-plugin(1)> and L<nbdkit-*-filter(1)> name a page of
#    ours or a plugin/filter that the installed nbdkit has;
#  - man/Makefile.am lists it in POD_PAGES, so that it gets built.

source ./functions.sh
set -e
set -x

requires_program podchecker
requires_program perl

mandir="$abs_top_srcdir/man"
pods=( "$mandir"/*.pod )
if [ ! -e "${pods[0]}" ]; then
    echo "$0: no man/*.pod found in $mandir"
    exit 1
fi

# Where the installed nbdkit keeps its plugins and filters, to check
# cross-references to them.
eval "$(nbdkit --dump-config | grep -E '^(plugindir|filterdir)=')"
export plugindir filterdir

fail=0
for pod in "${pods[@]}"; do
    # podchecker: errors make it exit 1; warnings only print.
    out="$(podchecker "$pod" 2>&1)" || {
        echo "$out"
        echo "FAIL: $pod: podchecker errors"
        fail=1
    }
    if echo "$out" | grep -q WARNING; then
        echo "$out"
        echo "FAIL: $pod: podchecker warnings"
        fail=1
    fi

    perl -e '
        use strict;
        use warnings;
        my ($pod, $makefile) = @ARGV;
        my $bad = 0;
        sub bad { print STDERR "FAIL: $pod: @_\n"; $bad = 1; }

        (my $page = $pod) =~ s{.*/}{};
        $page =~ s{\.pod$}{};

        open my $fh, "<", $pod or die "$pod: $!";
        my @lines = <$fh>;
        close $fh;
        my $text = join "", @lines;

        # Line by line, knowing whether we are in a verbatim
        # paragraph (one whose first line starts with white space).
        my $para_start = 1;
        my $verbatim = 0;
        for my $i (0 .. $#lines) {
            my $l = $lines[$i];
            my $n = $i + 1;
            chomp $l;
            bad "line $n: trailing white space" if $l =~ /[ \t]$/;
            bad "line $n: tab character" if $l =~ /\t/;
            if ($l =~ /^\s*$/) {
                $para_start = 1;
                next;
            }
            if ($para_start) {
                $verbatim = $l =~ /^[ \t]/;
                $para_start = 0;
            }
            next if $verbatim;
            next if $l =~ m{^\s*\S*(?:https?|ftp)://\S*\s*$};
            bad "line $n: longer than 76 columns (" . length ($l) . ")"
                if length ($l) > 76;
        }

        # Sections.
        my @heads = $text =~ /^=head1\s+(.*?)\s*$/mg;
        my %have = map { $_ => 1 } @heads;
        my @required = ("NAME", "SYNOPSIS", "DESCRIPTION");
        push @required, "PARAMETERS" if $page =~ /-(plugin|filter)$/;
        push @required, "EXAMPLES", "SEE ALSO", "AUTHORS", "COPYRIGHT";
        for my $s (@required) {
            bad "missing section =head1 $s" unless $have{$s};
        }
        for my $s ("BUGS", "LICENSE") {
            bad "hand-written =head1 $s section" if $have{$s};
        }
        bad "=encoding is not used in these pages"
            if $text =~ /^=encoding/m;
        bad "NAME must be the first section"
            unless @heads && $heads[0] eq "NAME";

        # NAME: "page - description".
        if ($text =~ /^=head1 NAME\s*\n\s*\n(.*?)\n\s*\n/ms) {
            my $name = $1;
            $name =~ s/\s+/ /g;
            if ($name !~ /^\Q$page\E - (.*)$/) {
                bad "NAME must read \"$page - description\", not \"$name\"";
            }
            else {
                my $d = $1;
                bad "NAME description must start in lower case"
                    if $d =~ /^[A-Z](?:[a-z]|\s|$)/;
                bad "NAME description must not end with a period"
                    if $d =~ /\.$/;
            }
        }

        # Cross-references to nbdkit plugins and filters.
        (my $mandir = $pod) =~ s{/[^/]*$}{};
        my %seen;
        while ($text =~ /L<(nbdkit-([a-z0-9-]+)-(plugin|filter))\(1\)>/g) {
            my ($ref, $name, $kind) = ($1, $2, $3);
            next if $seen{$ref}++;
            next if -f "$mandir/$ref.pod";
            my $dir = $kind eq "plugin" ? $ENV{plugindir} : $ENV{filterdir};
            next if defined $dir && -f "$dir/$ref.so";
            bad "L<$ref(1)>: no such page here, and nbdkit has no $kind $name";
        }

        # SEE ALSO ends with a period.
        if ($text =~ /^=head1 SEE ALSO\s*\n(.*?)(?=^=head1)/ms) {
            my $see = $1;
            $see =~ s/\s+$//;
            bad "SEE ALSO must end with a period" unless $see =~ /\.$/;
        }

        # Built by man/Makefile.am.
        open my $mk, "<", $makefile or die "$makefile: $!";
        my $am = join "", <$mk>;
        close $mk;
        $am =~ s/\\\n/ /g;
        my ($list) = $am =~ /^POD_PAGES\s*=(.*)$/m;
        bad "not listed in POD_PAGES in man/Makefile.am"
            unless defined $list && $list =~ /(?:^|\s)\Q$page\E\.pod(?:\s|$)/;

        exit $bad;
    ' "$pod" "$mandir/Makefile.am" || fail=1
done

exit $fail
