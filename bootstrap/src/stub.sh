# hypha bootstrap stub (POSIX sh). Arguments: NONCE HASH. No single quotes in this file: it is
# sent single-quoted on the remote command line.
n=$1
h=$2
# On a terminal (su needs one): no echo, no line editing, no newline translation from here on.
[ -t 0 ] && stty raw -echo 2>/dev/null
uid=$(id -u 2>/dev/null || echo x)
user=$(id -un 2>/dev/null || echo "uid$uid")
arch=$(uname -m 2>/dev/null || echo unknown)
z=raw
command -v gzip >/dev/null 2>&1 && z=gzip
cached=
pick=
tried=
for d in "${XDG_CACHE_HOME:+$XDG_CACHE_HOME/hypha}" "${HOME:+$HOME/.cache/hypha}" "/tmp/hypha-$uid" "/dev/shm/hypha-$uid"; do
    [ -n "$d" ] || continue
    if [ -f "$d/hypha-$h" ] && [ -x "$d/hypha-$h" ]; then
        cached=$d
        break
    fi
    [ -n "$pick" ] && continue
    tried="$tried,$d"
    mkdir -p "$d" 2>/dev/null && chmod 700 "$d" 2>/dev/null || continue
    p="$d/.probe-$$"
    if printf "#!/bin/sh\nexit 0\n" > "$p" 2>/dev/null && chmod 700 "$p" 2>/dev/null && "$p" 2>/dev/null; then
        pick=$d
    fi
    rm -f "$p" 2>/dev/null
done
if [ -n "$cached" ]; then
    st=CACHED
    d=$cached
elif [ -n "$pick" ]; then
    st=NEED
    d=$pick
else
    st=NODIR
    d=${tried#,}
fi
printf "\nHYPHA-STUB %s %s %s %s %s %s\n" "$n" "$arch" "$user" "$st" "$z" "$d"
[ "$st" = NODIR ] && exit 3
read -r cmd len sum || exit 4
if [ "$cmd" = SEND ]; then
    t="$d/.hypha-$h.$$"
    if [ "$z" = gzip ]; then
        head -c "$len" | gzip -dc > "$t"
    else
        head -c "$len" > "$t"
    fi
    got=$(cksum < "$t")
    if [ "${got%% *}" != "$sum" ]; then
        rm -f "$t"
        echo "hypha stub: the uploaded agent is damaged (cksum ${got%% *}, expected $sum)" >&2
        exit 5
    fi
    chmod 700 "$t" && mv -f "$t" "$d/hypha-$h" || exit 6
elif [ "$cmd" != RUN ]; then
    exit 7
fi
HYPHA_AGENT=$n
export HYPHA_AGENT
exec "$d/hypha-$h"
