# shellcheck shell=bash disable=SC2034
# Shared helpers for images/build-guest.sh and lab/lab. Source it, do not run it.
# Everything it fetches comes from the Debian archive through apt and lands under $VIREO_BUILD.

VIREO_ROOT=${VIREO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VIREO_BUILD=${VIREO_BUILD:-$VIREO_ROOT/build}
PROG=${PROG:-$(basename "$0")}

die() { echo "$PROG: $*" >&2; exit 1; }
note() { [ -n "${VIREO_QUIET:-}" ] || echo "$PROG: $*" >&2; }

# Key that changes whenever the apt package lists change (apt-get update). apt-cache takes
# ~1 s per call on these machines, so its answers are cached under this key.
apt_lists_key() {
    { stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* 2>/dev/null || true; } | md5sum | cut -c1-16
}

# pkg_resolve NAME -> prints "NAME VERSION" of the apt candidate (cached per apt-lists state).
pkg_resolve() {
    local name=$1 dir="$VIREO_BUILD/debs" key cache ver
    key=$(apt_lists_key)
    cache="$dir/.resolve-$name"
    if [ -f "$cache" ] && [ "$(head -n1 "$cache")" = "$key" ]; then
        sed -n 2p "$cache"; return 0
    fi
    ver=$(apt-cache show --no-all-versions "$name" 2>/dev/null | sed -n 's/^Version: //p' | head -n1) || true
    if [ -z "$ver" ]; then
        # No apt metadata (or no apt): fall back to what was downloaded before.
        ver=$(cat "$dir/$name/.latest" 2>/dev/null) ||
            die "apt does not know package $name (run apt-get update?) and none was downloaded before"
        echo "$PROG: warning: apt does not know $name, using cached version $ver" >&2
    fi
    mkdir -p "$dir"
    printf '%s\n%s %s\n' "$key" "$name" "$ver" >"$cache.tmp" && mv -f "$cache.tmp" "$cache"
    echo "$name $ver"
}

# The versioned kernel package behind linux-image-cloud-amd64, e.g. "linux-image-6.1.0-56-cloud-amd64 6.1.192-2".
kernel_pkg_resolve() {
    local dir="$VIREO_BUILD/debs" key cache dep
    key=$(apt_lists_key)
    cache="$dir/.resolve-kernel"
    if [ -f "$cache" ] && [ "$(head -n1 "$cache")" = "$key" ]; then
        sed -n 2p "$cache"; return 0
    fi
    dep=$(apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^Depends: .*\(linux-image-6\.[0-9.]*-[0-9]*-cloud-amd64\) (= \([^)]*\)).*/\1 \2/p' | head -n1) || true
    if [ -z "$dep" ]; then
        dep=$(cat "$dir/.kernel-latest" 2>/dev/null) ||
            die "cannot resolve linux-image-cloud-amd64 with apt-cache (run apt-get update?)"
        echo "$PROG: warning: apt cannot resolve linux-image-cloud-amd64, using cached $dep" >&2
    fi
    mkdir -p "$dir"
    echo "$dep" >"$dir/.kernel-latest"
    printf '%s\n%s\n' "$key" "$dep" >"$cache.tmp" && mv -f "$cache.tmp" "$cache"
    echo "$dep"
}

# pkg_fetch NAME VERSION -> prints the path of the .deb (downloaded once with apt-get download).
pkg_fetch() {
    local name=$1 ver=$2 dir="$VIREO_BUILD/debs/$1/$2" tmp deb
    deb=$(find "$dir" -maxdepth 1 -name '*.deb' 2>/dev/null | head -n1) || true
    if [ -z "$deb" ]; then
        note "downloading $name=$ver"
        tmp=$(mktemp -d "$VIREO_BUILD/debs/.dl.XXXXXX")
        (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$name=$ver" >"$tmp/log" 2>&1) || {
            sed 's/^/  /' "$tmp/log" >&2; rm -rf "$tmp"; die "apt-get download $name=$ver failed"; }
        mkdir -p "$dir"
        mv "$tmp"/*.deb "$dir/" || { rm -rf "$tmp"; die "apt-get download $name=$ver produced no .deb"; }
        rm -rf "$tmp"
        echo "$ver" >"$VIREO_BUILD/debs/$name/.latest"
        deb=$(find "$dir" -maxdepth 1 -name '*.deb' | head -n1)
    fi
    echo "$deb"
}

# pkg_tree NAME VERSION -> prints a directory holding the package's files (dpkg-deb -x, once).
pkg_tree() {
    local name=$1 ver=$2 dir="$VIREO_BUILD/pkgs/$1_$2" deb tmp
    if [ ! -f "$dir/.done" ]; then
        mkdir -p "$VIREO_BUILD/debs" "$VIREO_BUILD/pkgs"
        deb=$(pkg_fetch "$name" "$ver")
        rm -rf "$dir"
        tmp=$(mktemp -d "$VIREO_BUILD/pkgs/.x.XXXXXX")
        dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; die "dpkg-deb -x $deb failed"; }
        touch "$tmp/.done"
        mv "$tmp" "$dir"
    fi
    echo "$dir"
}

# The Debian cloud kernel, extracted, with modules.dep. Sets KVER (uname -r), KTREE, KPKG, KPKGVER.
kernel_tree() {
    local dep
    dep=$(kernel_pkg_resolve)
    KPKG=${dep% *}; KPKGVER=${dep#* }
    KVER=${KPKG#linux-image-}
    KTREE=$(pkg_tree "$KPKG" "$KPKGVER")
    [ -f "$KTREE/boot/vmlinuz-$KVER" ] || die "$KPKG has no /boot/vmlinuz-$KVER"
    if [ ! -s "$KTREE/lib/modules/$KVER/modules.dep" ]; then
        "$(busybox_bin)" depmod -b "$KTREE" "$KVER" || die "depmod failed on $KTREE"
    fi
}

# Path of a static busybox (from the busybox-static package, not from the host).
busybox_bin() {
    local r t
    r=$(pkg_resolve busybox-static)
    t=$(pkg_tree busybox-static "${r#* }")
    [ -x "$t/bin/busybox" ] || die "busybox-static has no /bin/busybox"
    echo "$t/bin/busybox"
}

# tool CMD PACKAGE -> prints a path to CMD: the host's, else from the package extracted under build/.
tool() {
    local cmd=$1 pkg=$2 r t
    if command -v "$cmd" >/dev/null 2>&1; then command -v "$cmd"; return 0; fi
    r=$(pkg_resolve "$pkg")
    t=$(pkg_tree "$pkg" "${r#* }")
    for d in usr/bin bin usr/sbin sbin; do
        [ -x "$t/$d/$cmd" ] && { echo "$t/$d/$cmd"; return 0; }
    done
    die "package $pkg has no $cmd"
}

# mod_closure KTREE KVER MODULE... -> prints module paths (relative to lib/modules/KVER), the
# modules and all their dependencies, in an order that can be insmod'ed front to back.
mod_closure() {
    local ktree=$1 kver=$2; shift 2
    awk -v want="$*" '
        function norm(s) { sub(/.*\//, "", s); sub(/\.ko(\.[a-z]+)?$/, "", s); gsub(/-/, "_", s); return s }
        function visit(p,   n, i, d) {
            if (p in done) return
            done[p] = 1
            n = split(deps[p], d, " ")
            for (i = n; i >= 1; i--) visit(d[i])
            print p
        }
        { p = $1; sub(/:$/, "", p); deps[p] = ""; for (i = 2; i <= NF; i++) deps[p] = deps[p] " " $i
          byname[norm(p)] = p }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) {
                m = w[i]; gsub(/-/, "_", m)
                if (!(m in byname)) { print "missing module " w[i] > "/dev/stderr"; bad = 1; continue }
                visit(byname[m])
            }
            exit bad
        }' "$ktree/lib/modules/$kver/modules.dep"
}

# Fingerprint of files (path, size, mtime): cheap "did the inputs change" check.
files_key() {
    stat -L -c '%n %s %Y' "$@" 2>/dev/null | md5sum | cut -c1-16
}

# strip_modsig FILE: remove an appended module signature, so that loading skips the (slow under
# TCG) signature check. The kernel does not enforce signatures (CONFIG_MODULE_SIG_FORCE unset).
strip_modsig() {
    local f=$1 size siglen
    [ "$(tail -c 28 "$f")" = "~Module signature appended~" ] || return 0
    size=$(stat -c %s "$f")
    siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{ print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4 }')
    truncate -s $((size - 28 - 12 - siglen)) "$f"
}
