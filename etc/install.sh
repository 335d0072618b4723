#!/bin/sh
# Install what `pip install` does not: the systemd unit, the sample
# configuration, the man pages and the shell completions of ringd.
#
#   pip install .                 # the ringd and ringctl commands
#   sh etc/install.sh /usr/local  # everything else
#
# Run `sh etc/install.sh --help` for the options. The unit's ExecStart points at
# BINDIR/ringd (PREFIX/bin unless --bindir) and at the installed configuration.
# An existing configuration file is never overwritten.
set -eu

usage() {
    cat <<EOF
usage: sh etc/install.sh [options] PREFIX

Installs into PREFIX (e.g. /usr/local):
  UNITDIR/ringd.service                  the systemd unit, ExecStart rewritten
  SYSCONFDIR/ringd/ringd.toml            the sample configuration (kept if present)
  PREFIX/share/doc/ringd/ringd.toml      the sample, always current
  PREFIX/share/man/man{1,5,8}/           ringctl(1), ringd.toml(5), ringd(8)
  PREFIX/share/{bash-completion,zsh,fish}/...   shell completions (needs ringctl)

options:
  --bindir DIR       where ringd and ringctl are (default PREFIX/bin; for a
                     virtualenv, its bin directory)
  --sysconfdir DIR   default PREFIX/etc, or /etc when PREFIX is /usr
  --unitdir DIR      default PREFIX/lib/systemd/system
  --destdir DIR      stage the files under DIR (for packages; paths inside the
                     files stay without it); also read from \$DESTDIR
  -h, --help         this help
EOF
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 2
}

prefix=
bindir=
sysconfdir=
unitdir=
destdir=${DESTDIR:-}
while [ $# -gt 0 ]; do
    case $1 in
        --bindir) [ $# -ge 2 ] || die "$1 needs a value"; bindir=$2; shift 2 ;;
        --sysconfdir) [ $# -ge 2 ] || die "$1 needs a value"; sysconfdir=$2; shift 2 ;;
        --unitdir) [ $# -ge 2 ] || die "$1 needs a value"; unitdir=$2; shift 2 ;;
        --destdir) [ $# -ge 2 ] || die "$1 needs a value"; destdir=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$prefix" ] || die "one PREFIX only"; prefix=$1; shift ;;
    esac
done
[ -n "$prefix" ] || { usage >&2; die "PREFIX is missing"; }

prefix=${prefix%/}
[ -n "$prefix" ] || prefix=/
bindir=${bindir:-$prefix/bin}
if [ -z "$sysconfdir" ]; then
    if [ "$prefix" = /usr ]; then sysconfdir=/etc; else sysconfdir=$prefix/etc; fi
fi
unitdir=${unitdir:-$prefix/lib/systemd/system}
for dir in "$prefix" "$bindir" "$sysconfdir" "$unitdir"; do
    case $dir in
        /*) ;;
        *) die "$dir: give absolute paths (they are written into the unit)" ;;
    esac
    # They go into a sed replacement and a unit's command line as they are.
    case $dir in
        *" "* | *"	"* | *"|"* | *"&"* | *"\\"*)
            die "$dir: paths with blanks, |, & or \\ are not supported" ;;
    esac
done

src=$(cd "$(dirname "$0")/.." && pwd)
mandir=$prefix/share/man
docdir=$prefix/share/doc/ringd
config=$sysconfdir/ringd/ringd.toml

put() { # put MODE SOURCE TARGET: install SOURCE as DESTDIR/TARGET
    install -d -m 0755 "$destdir$(dirname "$3")"
    install -m "$1" "$2" "$destdir$3"
    echo "installed $3"
}

# The unit: ExecStart at this prefix's ringd and configuration.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
sed -e "s|^ExecStart=.*|ExecStart=$bindir/ringd start --config $config|" \
    "$src/etc/systemd/ringd.service" >"$tmp"
grep -q "^ExecStart=$bindir/ringd start --config $config\$" "$tmp" ||
    die "could not rewrite ExecStart in etc/systemd/ringd.service"
put 0644 "$tmp" "$unitdir/ringd.service"

# The configuration: never overwrite one that is there (it is the operator's).
put 0644 "$src/etc/ringd.toml" "$docdir/ringd.toml"
if [ -e "$destdir$config" ]; then
    echo "kept $config (it exists; the current sample is $docdir/ringd.toml)"
else
    # 0640: the file may come to hold etcd_password.
    put 0640 "$src/etc/ringd.toml" "$config"
fi

put 0644 "$src/man/ringctl.1" "$mandir/man1/ringctl.1"
put 0644 "$src/man/ringd.toml.5" "$mandir/man5/ringd.toml.5"
put 0644 "$src/man/ringd.8" "$mandir/man8/ringd.8"

# Completion scripts come from ringctl itself (click writes them).
ringctl=
for candidate in "$destdir$bindir/ringctl" "$bindir/ringctl"; do
    if [ -x "$candidate" ]; then ringctl=$candidate; break; fi
done
if [ -n "$ringctl" ]; then
    for shell in bash zsh fish; do
        case $shell in
            bash) target=$prefix/share/bash-completion/completions/ringctl ;;
            zsh) target=$prefix/share/zsh/site-functions/_ringctl ;;
            fish) target=$prefix/share/fish/vendor_completions.d/ringctl.fish ;;
        esac
        "$ringctl" completion "$shell" >"$tmp" 2>/dev/null ||
            die "$ringctl completion $shell failed"
        put 0644 "$tmp" "$target"
    done
else
    echo "skipped shell completions: no ringctl in $bindir (pip install . first, or --bindir)"
fi

case $unitdir in
    /etc/systemd/system | /usr/lib/systemd/system | /lib/systemd/system | \
        /usr/local/lib/systemd/system) ;;
    *) echo "note: systemd does not look in $unitdir; run: systemctl link $unitdir/ringd.service" ;;
esac
cat <<EOF

Next:
  groupadd --system ringd       # who may use ringctl; set socket_group = "ringd"
  \$EDITOR $config
  systemctl daemon-reload && systemctl enable --now ringd
EOF
