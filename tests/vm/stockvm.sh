#!/bin/bash
# stockvm.sh -- run one command in a throw-away QEMU guest booted with Debian's
# STOCK kernel, for the parts of netlab this machine's kernel lacks (IPVS, dummy).
#
# Why a VM: IPVS and dummy links are kernel modules; a container or namespace
# cannot load them. The guest shares the host's / read-only over 9p (with a
# tmpfs overlay, so the guest may write anywhere and nothing persists) and
# $VM_RW read-write at the same path (the repo), so the host's venv and the
# repo's code run unchanged inside. The guest has no network device.
#
#   stockvm.sh setup        idempotent: apt deps, kernel .deb extraction, initramfs
#   stockvm.sh run 'CMD'    exit status = CMD's (124 on timeout, 125 if the
#                           guest could not start CMD)
#
# env: VM_RW (dir shared rw), VM_MEM (2048), VM_CPUS (2), VM_TIMEOUT (600),
#      VM_ACCEL (tcg | kvm; tcg by default: works everywhere, KVM where allowed),
#      NETLAB_VM_CACHE (/var/cache/netlab-vm).
#
# The mechanism follows the team's shared stockvm tool; the project carries its
# own copy so a fresh machine needs nothing outside the repo.
set -euo pipefail
CACHE=${NETLAB_VM_CACHE:-/var/cache/netlab-vm}

setup() {
  export DEBIAN_FRONTEND=noninteractive
  if ! { command -v qemu-system-x86_64 && [ -x /bin/busybox ] && command -v depmod && command -v cpio; } >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends qemu-system-x86 busybox-static kmod cpio gzip ipvsadm iptables ipset >/dev/null
  fi
  [ -f "$CACHE/initrd.img" ] && return 0
  mkdir -p "$CACHE"
  # One set-up at a time (two pytest runs may start together).
  exec 9>"$CACHE/.lock"; flock 9
  [ -f "$CACHE/initrd.img" ] && return 0
  cd "$CACHE"
  # Never `apt-get install linux-image-amd64` on the host: it pulls udev, whose
  # postinst starts udevd. Download the .deb and unpack it into the cache.
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -q >/dev/null
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  apt-get download -q "$pkg" >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get download -q "$pkg" >/dev/null; }
  rm -rf root && dpkg-deb -x "$pkg"_*.deb root && rm -f "$pkg"_*.deb
  KV=$(basename root/boot/vmlinuz-* | sed 's/^vmlinuz-//')
  depmod -b "$CACHE/root" "$KV"
  rm -rf initrd && mkdir -p initrd/{bin,proc,sys,dev,newroot,lower,upper,mods} && cp /bin/busybox initrd/bin/
  for m in $(for x in virtio_pci 9pnet_virtio 9p overlay virtio_rng; do
               modprobe -d "$CACHE/root" -S "$KV" --show-depends $x | awk '{print $2}'; done | awk '!s[$0]++'); do
    cp "$m" initrd/mods/ && basename "$m" >> initrd/mods/order; done
  cat > initrd/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin; export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "vm-init: insmod $m failed"; done
for a in $(cat /proc/cmdline); do case "$a" in vmjob=*) JOB=${a#vmjob=};; vmmods=*) MODS=${a#vmmods=};; vmrw=*) RW=${a#vmrw=};; esac; done
fail() { echo "vm-init: $*"; poweroff -f; }
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $O,ro,cache=loose hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o mode=0755 tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail overlay
R=/newroot
mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm; mount -t devpts devpts $R/dev/pts; mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null; mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mkdir -p $R/usr/lib/modules; mount --bind $R$MODS $R/usr/lib/modules
mkdir -p $R$JOB; mount -t 9p -o $O job $R$JOB || fail "mount job"
[ -n "$RW" ] && { mkdir -p $R$RW; mount -t 9p -o $O rw $R$RW || fail "mount rw"; }
hostname vm
printf '#!/bin/bash\n/bin/bash %s/cmd.sh\necho $? > %s/rc\nsync\necho o > /proc/sysrq-trigger\nsleep 10\n' $JOB $JOB > $R/.vm-stage2
exec switch_root $R /bin/bash /.vm-stage2   # switch_root (not chroot): module autoload finds /sbin/modprobe
INIT
  chmod +x initrd/init
  (cd initrd && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > initrd.img.tmp
  echo "$KV" > kv
  mv initrd.img.tmp initrd.img
}

run() {
  KV=$(cat "$CACHE/kv"); JOB=$(mktemp -d /tmp/netlab-vmjob.XXXXXX)
  trap 'rm -rf "$JOB"' EXIT
  { printf 'export PATH=%q HOME=%q LANG=C.UTF-8\n' "$PATH:/usr/sbin:/sbin" "${HOME:-/root}"
    printf 'cd %q || exit 125\n' "$PWD"; printf '%s\n' "$*"; } > "$JOB/cmd.sh"
  if [ "${VM_ACCEL:-tcg}" = tcg ]; then ACC="-accel tcg,thread=multi,tb-size=512 -cpu max"; else ACC="-accel kvm -cpu host"; fi
  set +e
  # shellcheck disable=SC2086
  timeout "${VM_TIMEOUT:-600}" qemu-system-x86_64 $ACC -m "${VM_MEM:-2048}" -smp "${VM_CPUS:-2}" -machine q35 \
    -nodefaults -no-user-config -display none -serial stdio -monitor none -nic none -no-reboot \
    -kernel "$CACHE/root/boot/vmlinuz-$KV" -initrd "$CACHE/initrd.img" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 vmjob=$JOB vmmods=$CACHE/root/lib/modules${VM_RW:+ vmrw=$VM_RW}" \
    -fsdev local,id=r,path=/,security_model=none,readonly=on,multidevs=remap -device virtio-9p-pci,fsdev=r,mount_tag=hostroot \
    -fsdev local,id=j,path="$JOB",security_model=none -device virtio-9p-pci,fsdev=j,mount_tag=job \
    ${VM_RW:+-fsdev local,id=w,path=$VM_RW,security_model=none -device virtio-9p-pci,fsdev=w,mount_tag=rw} \
    -device virtio-rng-pci </dev/null | grep --line-buffered -v -E '\] (sysrq: Power Off|reboot: Power down)'
  QRC=${PIPESTATUS[0]}; RC=$(cat "$JOB/rc" 2>/dev/null || echo 125)
  [ "$QRC" = 124 ] && { echo "stockvm: timeout after ${VM_TIMEOUT:-600}s" >&2; RC=124; }
  return "$RC"
}

case "${1:-}" in
  setup) setup ;;
  run) shift; setup; run "$@" ;;
  *) echo "usage: $0 setup | run CMD" >&2; exit 2 ;;
esac
