# hypha bootstrap stub (POSIX sh). Arguments: NONCE, then ARCH HASH SIZE CKSUM for each build of
# the program: the agent for this host is hypha-HASH of the build for its architecture, of SIZE
# bytes with this POSIX cksum. No single quotes in this file: it is sent single-quoted on the
# remote command line. Only POSIX sh and the common busybox applets (ls -ldn, not stat); cksum,
# gzip, head -c, fractional sleep and stty may be missing: each has a fallback.
n=$1
shift
# On a terminal (su needs one): no echo, no line editing, no newline translation from here on.
[ -t 0 ] && stty raw -echo 2>/dev/null
# Fields of ls are split unquoted below: no globbing.
set -f
uid=$(id -u 2>/dev/null || echo x)
user=$(id -un 2>/dev/null || echo "uid$uid")
# The architecture by the name builds go by (as Rust names it), then the build for it.
arch=$(uname -m 2>/dev/null || echo unknown)
case "$arch" in
    amd64 | x64) arch=x86_64 ;;
    arm64) arch=aarch64 ;;
    i[3456]86) arch=x86 ;;
    ppc64 | ppc64le) arch=powerpc64 ;;
    armv*) arch=arm ;;
esac
h=
while [ "$#" -ge 4 ]; do
    if [ "$1" = "$arch" ]; then
        h=$2
        size=$3
        sum=$4
    fi
    shift 4
done
if [ -z "$h" ]; then
    printf "\nHYPHA-STUB %s %s %s NOBUILD raw - -\n" "$n" "$arch" "$user"
    exit 3
fi
z=raw
command -v gzip >/dev/null 2>&1 && z=gzip
ck=
command -v cksum >/dev/null 2>&1 && ck=1
# mine KIND PATH: PATH itself (a link is not followed) is of KIND (d or -), owned by this user,
# writable by no one else (no group or other write bit, no ACL). Sets why (on failure) and sz.
mine() {
    l=$(ls -ldn "$2" 2>/dev/null) || { why=gone; return 1; }
    set -- "$1" $l
    case "$2" in
        "$1"*) ;;
        *) why=type=$2; return 1 ;;
    esac
    case "$2" in
        ?????w* | ????????w*) why=mode=$2; return 1 ;;
        ??????????+*) why=acl; return 1 ;;
    esac
    [ "$4" = "$uid" ] || { why=uid=$4; return 1; }
    sz=$6
}
# safe DIR: no one but this user or root can rename entries of DIR (links followed): its owner is
# one of them, and others may not write to it unless it is sticky (as /tmp is).
safe() {
    l=$(ls -ldnL "$1" 2>/dev/null) || return 1
    set -- $l
    [ "$3" = "$uid" ] || [ "$3" = 0 ] || return 1
    case "$1" in
        d????????[tT]*) ;;
        d????w* | d???????w* | d?????????+*) return 1 ;;
        d*) ;;
        *) return 1 ;;
    esac
}
# fits FILE: FILE is this agent, as far as the tools here can tell (the hash in the Hello of the
# agent has the last word). Sets bad to what was wrong.
fits() {
    mine - "$1" || { bad=$why; return 1; }
    [ "$sz" = "$size" ] || { bad=size=$sz; return 1; }
    if [ -n "$ck" ]; then
        got=$(cksum < "$1") || { bad=unreadable; return 1; }
        got=${got%% *}
        [ "$got" = "$sum" ] || { bad=cksum=$got; return 1; }
    fi
    [ -x "$1" ] || { bad=noexec; return 1; }
}
# cached: the agent in $d is there and fits. Sets found to what was wrong with one that is there.
cached() {
    [ -e "$f" ] || [ -L "$f" ] || return 1
    fits "$f" && return 0
    found=$bad
    return 1
}
st=NODIR
found=-
tried=
for d in "${XDG_CACHE_HOME:+$XDG_CACHE_HOME/hypha}" "${HOME:+$HOME/.cache/hypha}" "/tmp/hypha-$uid" "/dev/shm/hypha-$uid"; do
    [ -n "$d" ] || continue
    if [ ! -e "$d" ] && [ ! -L "$d" ]; then
        mkdir -p "${d%/*}" 2>/dev/null
        mkdir -m 700 "$d" 2>/dev/null
    fi
    # Another user may have made it first (in /tmp, say): then it is not ours to use.
    if ! mine d "$d"; then
        tried="$tried,$d ($why)"
        continue
    fi
    if ! safe "${d%/*}"; then
        tried="$tried,$d (others may rename in ${d%/*})"
        continue
    fi
    f=$d/hypha-$h
    found=-
    if cached; then
        st=CACHED
        break
    fi
    p="$d/.probe-$$"
    if printf "#!/bin/sh\nexit 0\n" > "$p" 2>/dev/null && chmod 700 "$p" 2>/dev/null && "$p" 2>/dev/null; then
        rm -f "$p"
        st=NEED
        break
    fi
    rm -f "$p" 2>/dev/null
    tried="$tried,$d (not writable, or may not run programs)"
done
lk=
if [ "$st" = NEED ]; then
    # One upload per host: the first start takes the lock, the others wait for its agent (a
    # bounded wait; a holder that died is noticed by its pid). Past the bound they upload too.
    lk=$d/.lock-$h
    w=0
    while ! mkdir "$lk" 2>/dev/null; do
        if cached; then
            st=CACHED
            found=-
            break
        fi
        hp=$(cat "$lk/pid" 2>/dev/null)
        if [ -n "$hp" ] && ! kill -0 "$hp" 2>/dev/null; then
            rm -rf "$lk"
            continue
        fi
        w=$((w + 1))
        if [ "$w" -gt 300 ]; then
            lk=
            break
        fi
        sleep 0.1 2>/dev/null || { sleep 1; w=$((w + 9)); }
    done
    if [ "$st" = CACHED ]; then
        lk=
    elif [ -n "$lk" ]; then
        trap "rm -rf \"\$lk\"" EXIT
        trap "rm -rf \"\$lk\"; exit 1" HUP INT TERM PIPE
        echo $$ > "$lk/pid"
        # Installed while we waited for the lock.
        if cached; then
            st=CACHED
            found=-
            rm -rf "$lk"
            lk=
        fi
    fi
fi
[ "$st" = NODIR ] && d=${tried#,}
printf "\nHYPHA-STUB %s %s %s %s %s %s %s\n" "$n" "$arch" "$user" "$st" "$z" "$found" "$d"
[ "$st" = NODIR ] && exit 3
# A cached agent runs at once: the parent has nothing to say to a start that fits (and waiting
# for it to say so would cost a round trip).
if [ "$st" = CACHED ]; then
    exec "$f" --hypha-agent "$n"
    exit 6
fi
read -r cmd len || exit 4
if [ "$cmd" = SEND ]; then
    t="$d/.hypha-$h.$$"
    # Exactly len bytes: what follows on stdin is for the agent.
    if head -c 0 < /dev/null > /dev/null 2>&1; then
        take() { head -c "$len"; }
    elif dd bs=1 count=0 iflag=fullblock < /dev/null > /dev/null 2>&1; then
        take() {
            dd bs=65536 count=$((len / 65536)) iflag=fullblock 2>/dev/null
            [ $((len % 65536)) -eq 0 ] || dd bs=$((len % 65536)) count=1 iflag=fullblock 2>/dev/null
        }
    else
        take() { dd bs=1 count="$len" 2>/dev/null; }
    fi
    if [ "$z" = gzip ]; then
        take | gzip -dc > "$t"
    else
        take > "$t"
    fi
    chmod 700 "$t" 2>/dev/null
    # Everything of this start is gone before the parent reads why it failed.
    failed() {
        rm -f "$t"
        [ -n "$lk" ] && rm -rf "$lk"
        printf "\nHYPHA-STUB-FAILED %s %s\n" "$n" "$1"
        exit 5
    }
    fits "$t" || failed "the uploaded agent is damaged ($bad)"
    # A directory (or a link to one) by the name of the agent would take the file inside it.
    [ -d "$f" ] && rm -rf "$f"
    mv -f "$t" "$f" || failed "cannot rename it into place"
    [ -n "$lk" ] && rm -rf "$lk"
    printf "\nHYPHA-STUB-INSTALLED %s\n" "$n"
else
    exit 7
fi
exec "$f" --hypha-agent "$n"
