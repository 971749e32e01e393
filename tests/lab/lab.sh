#!/usr/bin/env bash
# The SSH test lab: real sshd hosts, each in its own network namespace (own address) and mount
# namespace (own /home, /tmp and /dev/shm), on a bridge that only this script creates.
#
#   tests/lab/lab.sh up      install what is missing, start the hosts (idempotent)
#   tests/lab/lab.sh down    stop the hosts, remove namespaces, bridge and state
#   tests/lab/lab.sh status  say whether the lab is up
#
# Needs root. Only addresses this script creates (LAB_NET below, inside its own namespaces) are
# ever used. Hosts:
#   plain   10.213.0.11   an ordinary host (with a 1 MiB disk at /tmp/small-disk)
#   noisy   10.213.0.12   MOTD, a .bashrc and a .profile that print text before anything runs
#   locked  10.213.0.13   no writable, executable directory for the agent cache
#   arm     10.213.0.14   a real aarch64 userland (arm64 busybox) run by qemu-user: `uname -m` says aarch64
#   broken  10.213.0.15   its test hides /proc there, so the agent cannot read /proc/self/exe
#   cache   10.213.0.16   for the agent-cache tests alone (they plant files there as another user)
#   bb      10.213.0.17   a userland that is a static busybox alone (no libc, no coreutils, no cksum)
#   old     10.213.0.18   an older distribution's userland: Debian 11 (glibc 2.31, OpenSSL 1.1 only)
#   hop1    10.213.0.21   the first host of a chain; hop2 10.213.2.2 is reachable only from hop1,
#   hop3 10.213.3.2 only from hop2, hop4 10.213.4.2 only from hop3 (each pair on its own veth)
# The sessions of arm, bb and old run in a userland of their own (sshd's ChrootDirectory, a tree
# under $LAB/hosts/NAME/root in the host's mount namespace), built from base trees kept in
# $LAB_CACHE across `down`. Inside: the lab users, /home, /tmp and /dev/shm (the host's own), a few
# devices, /proc, and $LAB read-only at the same path.
# Users on every host: hypha (ed25519 + RSA-with-passphrase keys, and a password), who may sudo to
# hypha-nopw without a password and to hypha-pw with it, and to nobody else. hypha-other cannot
# log in: tests act as it (as root, in a host's mount namespace) to plant files hypha must not trust.
set -euo pipefail

LAB="${HYPHA_LAB_DIR:-/run/hypha-lab}"
LAB_NET=10.213.0
BRIDGE=hyphabr0
HOSTS="plain:11 noisy:12 locked:13 arm:14 broken:15 cache:16 bb:17 old:18 hop1:21"
# Chain hosts: name:subnet:upstream (the host whose namespace alone reaches it).
CHAIN="hop2:2:hop1 hop3:3:hop2 hop4:4:hop3"
# Hosts whose sessions run in a userland of their own: name:base tree (in $LAB_CACHE).
ROOTS="bb:busybox-amd64 old:bullseye-amd64 arm:busybox-arm64"
LAB_CACHE="${HYPHA_LAB_CACHE:-/var/cache/hypha-lab}"
DEBIAN_MIRROR=http://deb.debian.org/debian
USER_NAME=hypha
# Users made on this machine (the hosts share its /etc/passwd).
LAB_USERS="$USER_NAME hypha-nopw hypha-pw hypha-other"
USER_PASSWORD=hypha-test-password
RSA_PASSPHRASE=hypha-rsa-passphrase
TARGET_PASSWORD=hypha-pw-password

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "lab: needs root" >&2
        exit 2
    fi
}

install_packages() {
    local missing=()
    for pkg in openssh-server openssh-client sudo iproute2 util-linux passwd debootstrap debian-archive-keyring qemu-user-static; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "lab: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    # The package's own sshd (if it started one) is not ours to use: the lab runs its own.
    mkdir -p /run/sshd
}

# The .deb of SPEC (such as busybox-static:arm64), downloaded into DIR (with fresh package lists
# if the ones here do not know it).
download_deb() {
    local spec="$1" dir="$2"
    (cd "$dir" && apt-get download -qq "$spec" >&2 2>/dev/null) && return
    apt-get update -qq >&2
    (cd "$dir" && apt-get download -qq "$spec" >&2)
}

# A base tree whose only program is Debian's static busybox for ARCH, with a link for each of its
# applets but cksum (busybox builds often lack it: the stub must do without).
busybox_tree() {
    local tree="$LAB_CACHE/$1" arch="$2" run=
    [ -f "$tree.complete" ] && return
    echo "lab: building $tree" >&2
    local new="$tree.new"
    rm -rf --one-file-system "$new"
    mkdir -p "$new/deb" "$new/root/bin"
    if [ "$arch" != "$(dpkg --print-architecture)" ]; then
        if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
            dpkg --add-architecture "$arch"
            apt-get update -qq >&2
        fi
        run=/usr/bin/qemu-$(arch_of "$arch")-static
    fi
    download_deb "busybox-static:$arch" "$new/deb"
    dpkg-deb -x "$new"/deb/busybox-static_*.deb "$new/deb/x"
    local root="$new/root"
    cp "$new/deb/x/bin/busybox" "$root/bin/busybox"
    local path
    $run "$root/bin/busybox" --list-full | while read -r path; do
        case "$path" in
            */cksum | bin/busybox) continue ;;
            */*) mkdir -p "$root/${path%/*}" ;;
            *) path=bin/$path ;;
        esac
        ln -sf /bin/busybox "$root/$path"
    done
    # sshd runs commands with the user's login shell, bash on this machine.
    if [ ! -e "$root/bin/bash" ]; then
        printf '#!/bin/sh\n# The login shell of the lab users: busybox has no bash.\nexec /bin/sh "$@"\n' > "$root/bin/bash"
        chmod 755 "$root/bin/bash"
    fi
    chmod 755 "$root"
    rm -rf "$tree"
    mv "$root" "$tree"
    rm -rf "$new"
    touch "$tree.complete"
}

# A minimal Debian SUITE tree for ARCH (debootstrap), with EXTRA packages.
debian_tree() {
    local tree="$LAB_CACHE/$1" suite="$2" arch="$3" extra="$4"
    [ -f "$tree.complete" ] && return
    echo "lab: debootstrapping $suite ($arch) into $tree" >&2
    local new="$tree.new"
    unmount_under "$new"
    rm -rf --one-file-system "$new"
    mkdir -p "$new"
    if ! debootstrap --variant=minbase --arch="$arch" --include="$extra" "$suite" "$new" "$DEBIAN_MIRROR" > "$tree.log" 2>&1; then
        echo "lab: debootstrap failed:" >&2
        tail -n 20 "$tree.log" >&2
        unmount_under "$new"
        exit 1
    fi
    unmount_under "$new"
    # Nothing of the build is needed in the tree.
    rm -rf "$new"/var/cache/apt/archives/*.deb "$new"/var/lib/apt/lists/*
    chmod 755 "$new"
    rm -rf --one-file-system "$tree"
    mv "$new" "$tree"
    touch "$tree.complete"
}

# The kernel's (and qemu's) name of Debian architecture $1.
arch_of() {
    case "$1" in
        arm64) echo aarch64 ;;
        amd64) echo x86_64 ;;
        *) echo "$1" ;;
    esac
}

# Unmount everything mounted at or below $1 (deepest first).
unmount_under() {
    local target
    findmnt -rn -o TARGET | sort -r | while read -r target; do
        case "$target" in
            "$1" | "$1"/*) umount -l "$target" 2>/dev/null || true ;;
        esac
    done
}

# aarch64 programs run by qemu-user (qemu-user-static), registered with the kernel's binfmt_misc
# as Debian's package describes it (no systemd here to do it), always with the F flag: the kernel
# opens the interpreter at registration, so it runs programs inside a chroot that has no qemu.
register_qemu() {
    local fs=/proc/sys/fs/binfmt_misc name=qemu-aarch64 conf
    [ -e "$fs/register" ] || mount -t binfmt_misc binfmt_misc "$fs"
    if [ -e "$fs/$name" ]; then
        if grep -q '^flags: .*F' "$fs/$name"; then
            grep -qx enabled "$fs/$name" || echo 1 > "$fs/$name"
            return
        fi
        echo -1 > "$fs/$name"
    fi
    for conf in /usr/lib/binfmt.d/$name.conf /usr/lib/binfmt.d/$name-static.conf ""; do
        [ -f "$conf" ] && break
    done
    [ -n "$conf" ] || { echo "lab: qemu-user-static registers no $name" >&2; exit 1; }
    local line type offset magic mask interpreter flags
    line=$(grep -v '^#' "$conf" | head -n 1)
    IFS=: read -r _ _ type offset magic mask interpreter flags <<< "$line"
    case "$flags" in *F*) ;; *) flags="${flags}F" ;; esac
    printf ':%s:%s:%s:%s:%s:%s:%s' "$name" "$type" "$offset" "$magic" "$mask" "$interpreter" "$flags" > "$fs/register"
}

# The base trees of the hosts in ROOTS.
make_roots() {
    busybox_tree busybox-amd64 amd64
    debian_tree bullseye-amd64 bullseye amd64 libssl1.1
    register_qemu
    busybox_tree busybox-arm64 arm64
}

make_user() {
    for user in $LAB_USERS; do
        id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
    done
    echo "$USER_NAME:$USER_PASSWORD" | chpasswd
    echo "hypha-pw:$TARGET_PASSWORD" | chpasswd
    # sudo from $USER_NAME: to hypha-nopw without a password, to hypha-pw with its own password,
    # to nobody else. No cached credentials, so every test meets the prompt.
    cat > /etc/sudoers.d/hypha-lab <<SUDOERS
Defaults:$USER_NAME timestamp_timeout=0
$USER_NAME ALL=(hypha-nopw) NOPASSWD: ALL
$USER_NAME ALL=(hypha-pw) ALL
SUDOERS
    chmod 440 /etc/sudoers.d/hypha-lab
}

make_keys() {
    mkdir -p "$LAB/keys"
    local k="$LAB/keys"
    [ -f "$k/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C hypha-lab -f "$k/id_ed25519"
    [ -f "$k/id_rsa" ] || ssh-keygen -q -t rsa -b 3072 -N "$RSA_PASSPHRASE" -C hypha-lab-rsa -f "$k/id_rsa"
    [ -f "$k/stranger_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C not-authorized -f "$k/stranger_ed25519"
    cat "$k/id_ed25519.pub" "$k/id_rsa.pub" > "$k/authorized_keys"
    echo "$RSA_PASSPHRASE" > "$k/rsa_passphrase"
    echo "$USER_PASSWORD" > "$k/password"
    echo "$TARGET_PASSWORD" > "$k/target_password"
}

host_setup_script() {
    # Runs inside the host's own mount namespace, before sshd starts.
    local name="$1" dir="$LAB/hosts/$1"
    cat <<EOF
set -e
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /home
home=/home/$USER_NAME
mkdir -p \$home/.ssh
cp $LAB/keys/authorized_keys \$home/.ssh/authorized_keys
chown -R $USER_NAME:$USER_NAME \$home
chmod 700 \$home/.ssh
EOF
    case "$name" in
        plain)
            # A small disk of its own, for transfers that fill it.
            cat <<EOF
mkdir -p /tmp/small-disk
mount -t tmpfs -o size=1m,mode=1777 tmpfs /tmp/small-disk
EOF
            ;;
        noisy)
            cat <<EOF
printf 'Welcome to noisy!\nThis is the message of the day, HYPHA-SYNC-not-the-marker\n' > $dir/motd
mount --bind $dir/motd /etc/motd
printf 'echo "bashrc says hello"\necho "and prints binary junk: \\\\x00\\\\x01" >&2\n' > \$home/.bashrc
printf 'echo "profile says hello"\n' > \$home/.profile
chown $USER_NAME:$USER_NAME \$home/.bashrc \$home/.profile
EOF
            ;;
        locked)
            cat <<EOF
mount -o remount,noexec /tmp
mount -o remount,noexec /dev/shm
mount -o remount,ro /home
EOF
            ;;
    esac
    local base
    if base=$(root_base "$name"); then
        # The session's userland: the base tree under a writable layer of this host's own. The
        # tree and every directory above it are root's and written by no one else (sshd's check).
        cat <<EOF
root=$dir/root
mkdir -p $dir/rw \$root
mount -t tmpfs -o mode=755 tmpfs $dir/rw
mkdir -m 755 $dir/rw/upper $dir/rw/work
mount -t overlay overlay -o lowerdir=$LAB_CACHE/$base,upperdir=$dir/rw/upper,workdir=$dir/rw/work \$root
mkdir -p \$root/etc \$root/home \$root/tmp \$root/dev \$root/proc \$root$LAB
grep -E '^(root|nogroup|nobody|$(echo $LAB_USERS | tr ' ' '|')):' /etc/passwd > \$root/etc/passwd
grep -E '^(root|nogroup|nobody|$(echo $LAB_USERS | tr ' ' '|')):' /etc/group > \$root/etc/group
mount --bind /home \$root/home
mount --bind /tmp \$root/tmp
mount -t tmpfs -o mode=755 tmpfs \$root/dev
for n in null zero full random urandom tty; do
    touch \$root/dev/\$n
    mount --bind /dev/\$n \$root/dev/\$n
done
mkdir -m 1777 \$root/dev/shm
mount --bind /dev/shm \$root/dev/shm
mount -t proc proc \$root/proc
mount --bind $LAB \$root$LAB
mount -o remount,bind,ro \$root$LAB
EOF
    fi
}

# The base tree (in LAB_CACHE) of host $1's userland, if it has one of its own.
root_base() {
    local entry
    for entry in $ROOTS; do
        if [ "${entry%%:*}" = "$1" ]; then
            echo "${entry#*:}"
            return
        fi
    done
    return 1
}

bridge_host_net() {
    local name="$1" ip="$2" ns="hypha-$1"
    ip netns add "$ns" 2>/dev/null || true
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
        ip link add "veth-$name" type veth peer name eth0 netns "$ns"
        ip link set "veth-$name" master "$BRIDGE" up
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    fi
}

chain_host_net() {
    # A veth pair between the upstream host's namespace (.1) and this one's (.2): no other route.
    local name="$1" subnet="$2" up="$3" ns="hypha-$1"
    ip netns add "$ns" 2>/dev/null || true
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
        ip link add "up-$name" netns "hypha-$up" type veth peer name eth0 netns "$ns"
        ip -n "hypha-$up" addr add "10.213.$subnet.1/24" dev "up-$name"
        ip -n "hypha-$up" link set "up-$name" up
        ip -n "$ns" addr add "10.213.$subnet.2/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    fi
}

start_host() {
    local name="$1" ip="$2"
    local ns="hypha-$name" dir="$LAB/hosts/$name"
    mkdir -p "$dir"
    # sshd's ChrootDirectory wants every directory above a userland to be root's, written by no one else.
    chmod 755 "$LAB" "$LAB/hosts" "$dir"
    host_config "$name" "$ip" > "$dir/sshd_config.new"
    { host_setup_script "$name"; echo "exec /usr/sbin/sshd -f $dir/sshd_config -E $dir/sshd.log"; } > "$dir/setup.sh.new"
    if [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; then
        # A host that an older version of this script started is started again; the others are
        # left alone.
        if cmp -s "$dir/sshd_config.new" "$dir/sshd_config" && cmp -s "$dir/setup.sh.new" "$dir/setup.sh"; then
            rm -f "$dir/sshd_config.new" "$dir/setup.sh.new"
            return
        fi
        echo "lab: restarting $name (its definition changed)" >&2
        stop_host "$name"
    fi
    [ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$dir/ssh_host_ed25519_key"
    # A second key type, as most servers have: clients must check the type they know.
    [ -f "$dir/ssh_host_ecdsa_key" ] || ssh-keygen -q -t ecdsa -N "" -f "$dir/ssh_host_ecdsa_key"
    mv -f "$dir/sshd_config.new" "$dir/sshd_config"
    mv -f "$dir/setup.sh.new" "$dir/setup.sh"
    rm -f "$dir/sshd.pid"
    ip netns exec "$ns" unshare --mount --uts --propagation private sh -c "hostname lab-$name && exec sh $dir/setup.sh"
    for _ in $(seq 50); do
        [ -f "$dir/sshd.pid" ] && break
        sleep 0.1
    done
    [ -f "$dir/sshd.pid" ] || { echo "lab: sshd on $name did not start: $(cat "$dir/sshd.log" 2>/dev/null)" >&2; exit 1; }
}

host_config() {
    local name="$1" ip="$2" dir="$LAB/hosts/$1"
    cat <<EOF
ListenAddress $ip
Port 22
HostKey $dir/ssh_host_ed25519_key
HostKey $dir/ssh_host_ecdsa_key
PidFile $dir/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd $( [ "$name" = noisy ] && echo yes || echo no )
PermitRootLogin no
AllowUsers $USER_NAME
MaxStartups 200
MaxSessions 200
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
    if root_base "$name" >/dev/null; then
        echo "ChrootDirectory $dir/root"
    fi
}

# Stop host $1's sshd and everything running in its namespace (its mounts go with them).
stop_host() {
    local pidfile="$LAB/hosts/$1/sshd.pid"
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
    if ip netns pids "hypha-$1" >/dev/null 2>&1; then
        ip netns pids "hypha-$1" | xargs -r kill -9 2>/dev/null || true
        # Gone before anything binds its address again.
        for _ in $(seq 50); do
            [ -z "$(ip netns pids "hypha-$1" 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
}

host_addresses() {
    for entry in $HOSTS; do echo "${entry%%:*} $LAB_NET.${entry##*:}"; done
    for entry in $CHAIN; do IFS=: read -r name subnet _ <<< "$entry"; echo "$name 10.213.$subnet.2"; done
}

write_known_hosts() {
    # Written aside and renamed into place: tests of a running lab may be reading them (an `up`
    # that adds a host rewrites them).
    local new="$LAB/.new"
    mkdir -p "$new"
    : > "$new/known_hosts"
    : > "$new/wrong_known_hosts"
    : > "$new/known_hosts_ecdsa"
    host_addresses | while read -r name ip; do
        local dir="$LAB/hosts/$name"
        echo "$ip $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" >> "$new/known_hosts"
        # The same host with another key: what a man in the middle would present.
        echo "$ip $(cut -d' ' -f1,2 "$LAB/keys/stranger_ed25519.pub")" >> "$new/wrong_known_hosts"
        # Only the other key type, as an older client would have recorded it.
        echo "$ip $(cut -d' ' -f1,2 "$dir/ssh_host_ecdsa_key.pub")" >> "$new/known_hosts_ecdsa"
    done
    # The same with hashed host names (HashKnownHosts).
    cp "$new/known_hosts_ecdsa" "$new/known_hosts_ecdsa_hashed"
    ssh-keygen -q -H -f "$new/known_hosts_ecdsa_hashed" >/dev/null 2>&1
    rm -f "$new/known_hosts_ecdsa_hashed.old"
    for f in known_hosts wrong_known_hosts known_hosts_ecdsa known_hosts_ecdsa_hashed; do
        mv -f "$new/$f" "$LAB/$f"
    done
    rmdir "$new"
}

up() {
    need_root
    mkdir -p "$LAB"
    exec 9>"$LAB.lock"
    flock 9
    # Quick when the lab is up and was set up by this very script; a changed script goes through
    # every step again (each host whose definition changed is restarted).
    local stamp
    stamp=$(cksum < "${BASH_SOURCE[0]}")
    if [ "$(cat "$LAB/ready" 2>/dev/null)" = "$stamp" ] && all_running && users_exist; then
        return
    fi
    install_packages
    make_user
    make_keys
    make_roots
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$LAB_NET.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    for entry in $HOSTS; do
        bridge_host_net "${entry%%:*}" "$LAB_NET.${entry##*:}"
        start_host "${entry%%:*}" "$LAB_NET.${entry##*:}"
    done
    for entry in $CHAIN; do
        IFS=: read -r name subnet up <<< "$entry"
        chain_host_net "$name" "$subnet" "$up"
        start_host "$name" "10.213.$subnet.2"
    done
    write_known_hosts
    {
        echo "LAB=$LAB"
        echo "USER=$USER_NAME"
        host_addresses | while read -r name ip; do echo "HOST_$name=$ip"; done
        for entry in $ROOTS; do echo "ROOT_${entry%%:*}=$LAB/hosts/${entry%%:*}/root"; done
    } > "$LAB/env.new"
    mv -f "$LAB/env.new" "$LAB/env"
    echo "$stamp" > "$LAB/ready"
}

users_exist() {
    local user
    for user in $LAB_USERS; do
        id "$user" >/dev/null 2>&1 || return 1
    done
}

all_running() {
    local name
    for name in $(host_addresses | cut -d' ' -f1); do
        local pidfile="$LAB/hosts/$name/sshd.pid"
        [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || return 1
    done
}

down() {
    need_root
    # Chain hosts first: their veths live in upstream namespaces.
    for name in $(host_addresses | cut -d' ' -f1 | tac); do
        stop_host "$name"
        ip netns del "hypha-$name" 2>/dev/null || true
        ip link del "veth-$name" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f /etc/sudoers.d/hypha-lab
    # Agents cached by tests that ran as the lab users on this machine itself (sudo from root).
    for user in $LAB_USERS; do
        home=$(getent passwd "$user" | cut -d: -f6) || continue
        uid=$(id -u "$user")
        rm -rf "$home/.cache/hypha" "/tmp/hypha-$uid" "/dev/shm/hypha-$uid"
    done
    # The hosts' mounts lived in their own namespaces, gone with their processes; none may be left
    # here before the lab's directory goes (a userland holds the lab's directory read-only).
    unmount_under "$LAB"
    rm -rf --one-file-system "$LAB"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) if [ -f "$LAB/ready" ] && all_running; then echo up; else echo down; exit 1; fi ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
