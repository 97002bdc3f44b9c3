"""Escape probes run INSIDE a brig sandbox by the escape battery.

`python3 probe.py NAME [ARGS...]` performs one attack and exits
0 if it was blocked, 1 if it succeeded (an escape), 2 on a broken probe.
It prints one line: BLOCKED/ESCAPED <name>: <detail>.
"""

import ctypes
import errno
import os
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)

# x86_64 syscall numbers (the battery runs on x86_64).
SYS = {
    "ptrace": 101,
    "mount": 165,
    "unshare": 272,
    "setns": 308,
    "add_key": 248,
    "keyctl": 250,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "perf_event_open": 298,
    "pivot_root": 155,
    "kexec_load": 246,
    "init_module": 175,
}


def blocked(name, detail):
    print(f"BLOCKED {name}: {detail}")
    sys.exit(0)


def escaped(name, detail):
    print(f"ESCAPED {name}: {detail}")
    sys.exit(1)


def syscall(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(SYS[name]), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()


def expect_syscall_denied(name, *args):
    r, e = syscall(name, *args)
    if r == -1 and e in (errno.EPERM, errno.EACCES, errno.ENOSYS):
        blocked(name, f"{errno.errorcode.get(e, e)}")
    escaped(name, f"returned {r} errno {e}")


def read_file(path):
    with open(path, "rb") as f:
        return f.read(64)


def main():
    name = sys.argv[1]
    args = sys.argv[2:]

    if name == "read-host-file":
        # The test plants a canary on the host; no path inside may reach it.
        for p in args + ["/etc/shadow", "/root/.bashrc", "/proc/1/root/etc/shadow"]:
            try:
                read_file(p)
                escaped(name, f"read {p}")
            except OSError:
                pass
        blocked(name, "no host file readable")

    if name == "write-rootfs":
        for p in ["/usr/bin/brig-evil", "/etc/brig-evil", "/brig-evil", "/.brig/evil"]:
            try:
                with open(p, "w") as f:
                    f.write("x")
                escaped(name, f"wrote {p}")
            except OSError:
                pass
        blocked(name, "root filesystem is read-only")

    if name == "mount":
        src = ctypes.c_char_p(b"none")
        tgt = ctypes.c_char_p(b"/tmp")
        fst = ctypes.c_char_p(b"tmpfs")
        ctypes.set_errno(0)
        r = libc.mount(src, tgt, fst, ctypes.c_ulong(0), None)
        e = ctypes.get_errno()
        if r == -1 and e in (errno.EPERM, errno.EACCES):
            blocked(name, errno.errorcode[e])
        escaped(name, f"mount returned {r} errno {e}")

    if name == "ptrace":
        pid = os.fork()
        if pid == 0:
            import time
            time.sleep(5)
            os._exit(0)
        try:
            r, e = syscall("ptrace", 16, pid, 0, 0)  # PTRACE_ATTACH
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        if r == -1 and e in (errno.EPERM, errno.EACCES):
            blocked(name, errno.errorcode[e])
        escaped(name, f"ptrace attach returned {r} errno {e}")

    if name == "unshare":
        for flag, what in [(0x10000000, "user"), (0x40000000, "net"), (0x00020000, "mount"), (0x20000000, "pid")]:
            r, e = syscall("unshare", flag)
            if r != -1:
                escaped(name, f"unshare({what}) succeeded")
        blocked(name, "every new namespace refused")

    if name == "setns":
        try:
            fd = os.open("/proc/1/ns/net", os.O_RDONLY)
        except OSError as ex:
            blocked(name, f"cannot even open ns file: {ex}")
        expect_syscall_denied("setns", fd, 0)

    if name == "raw-socket":
        for fam, typ, proto, what in [
            (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, "raw icmp"),
            (17, socket.SOCK_RAW, 0, "AF_PACKET"),
        ]:
            try:
                s = socket.socket(fam, typ, proto)
                s.close()
                escaped(name, f"opened {what}")
            except OSError:
                pass
        blocked(name, "raw and packet sockets refused")

    if name == "connect-tcp":
        # args: host port
        host, port = args[0], int(args[1])
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((host, port))
        except OSError as ex:
            blocked(name, f"{host}:{port}: {ex}")
        # Connected: on native every IPv4 address is local (the egress
        # channel's AnyIP route) and ports 80/443 are the sandbox's own
        # forwarder, which hands the stream to brig's egress proxy (under
        # brig serve; it refuses IP literals) or, with nobody serving,
        # resets it at once. Blocked means nothing but that comes back: a
        # close, a reset, or brig's own refusal (an HTTP error naming its
        # rule in X-Brig-Rule). Silence (a timeout) is not proof: escaped.
        try:
            s.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
            got = b""
            while len(got) < 4096:
                b = s.recv(4096)
                if not b:
                    break
                got += b
        except TimeoutError:
            escaped(name, f"connected to {host}:{port}, held open")
        except OSError as ex:
            blocked(name, f"{host}:{port}: accepted inside the sandbox, then reset ({ex})")
        if got == b"":
            blocked(name, f"{host}:{port}: accepted inside the sandbox, then closed")
        head = got.split(b"\r\n\r\n", 1)[0].lower()
        if head.startswith(b"http/1.") and b"\r\nx-brig-rule:" in head and not head.startswith((b"http/1.1 2", b"http/1.0 2")):
            blocked(name, f"{host}:{port}: refused by brig's egress proxy: {got.splitlines()[0]!r}")
        escaped(name, f"connected to {host}:{port} and got {got[:80]!r}")

    if name == "connect-unix":
        for p in args:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # "@name" is an abstract socket (argv cannot carry the NUL).
            addr = "\0" + p[1:] if p.startswith("@") else p
            try:
                s.connect(addr)
                escaped(name, f"connected to {p}")
            except OSError:
                pass
        blocked(name, "no unix socket of the host reachable")

    if name == "fork-bomb":
        # args: pids limit. Fork until refused; the limit must hold.
        limit = int(args[0])
        children = []
        refused = None
        try:
            for _ in range(limit * 4):
                try:
                    pid = os.fork()
                except OSError as ex:
                    refused = ex
                    break
                if pid == 0:
                    import time
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
        finally:
            for c in children:
                try:
                    os.kill(c, 9)
                except OSError:
                    pass
            for c in children:
                try:
                    os.waitpid(c, 0)
                except OSError:
                    pass
        if refused is not None and len(children) < limit:
            blocked(name, f"fork refused after {len(children)} children: {refused}")
        escaped(name, f"forked {len(children)} children with a limit of {limit}")

    if name == "memory-bomb":
        # Allocate and touch far more than the limit; the OOM killer must
        # kill us (so reaching the end is an escape).
        mib = int(args[0])
        chunks = []
        for _ in range(mib):
            chunks.append(bytearray(1024 * 1024))
        escaped(name, f"allocated {mib} MiB")

    if name == "disk-fill":
        # args: quota in MiB. Writing past it must fail with ENOSPC.
        quota = int(args[0])
        written = 0
        try:
            with open("/workspace/fill", "wb") as f:
                block = b"\0" * (1024 * 1024)
                for _ in range(quota * 2):
                    f.write(block)
                    f.flush()
                    written += 1
            escaped(name, f"wrote {written} MiB with a quota of {quota} MiB")
        except OSError as ex:
            if ex.errno == errno.ENOSPC and written <= quota:
                blocked(name, f"ENOSPC after {written} MiB")
            escaped(name, f"unexpected {ex} after {written} MiB")
        finally:
            try:
                os.unlink("/workspace/fill")
            except OSError:
                pass

    if name == "read-path":
        # args: paths that must not be readable or listable (another session's workspace).
        for p in args:
            try:
                if os.path.isdir(p):
                    os.listdir(p)
                else:
                    read_file(p)
                escaped(name, f"reached {p}")
            except OSError:
                pass
        blocked(name, "not reachable")

    if name == "setuid":
        # args: path of a setuid-root binary that prints its effective uid.
        import subprocess
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=10)
        except OSError as ex:
            blocked(name, f"cannot run: {ex}")
        if out.stdout.strip() == "0":
            escaped(name, "setuid binary ran with euid 0")
        try:
            os.setuid(0)
            escaped(name, "setuid(0) succeeded")
        except OSError:
            pass
        blocked(name, f"euid stayed {out.stdout.strip() or '?'}; setuid(0) refused")

    if name == "proc-sys-write":
        for p in ["/proc/sys/kernel/sysrq", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger", "/sys/kernel/mm/transparent_hugepage/enabled"]:
            try:
                with open(p, "w") as f:
                    f.write("1")
                escaped(name, f"wrote {p}")
            except OSError:
                pass
        blocked(name, "/proc/sys and /sys are read-only")

    if name == "device-nodes":
        try:
            os.mknod("/workspace/sda", 0o600 | 0o060000, os.makedev(8, 0))
            escaped(name, "mknod block device succeeded")
        except OSError:
            pass
        for p in ["/dev/sda", "/dev/vda", "/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg"]:
            try:
                read_file(p)
                escaped(name, f"read {p}")
            except OSError:
                pass
        blocked(name, "no device node reachable")

    if name == "keyring":
        desc = ctypes.c_char_p(b"brig-probe")
        typ = ctypes.c_char_p(b"user")
        payload = ctypes.c_char_p(b"x")
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(SYS["add_key"]), typ, desc, payload, ctypes.c_long(1), ctypes.c_long(-2))
        e = ctypes.get_errno()
        if r == -1 and e in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            r2, e2 = syscall("keyctl", 0, -3, 0)  # KEYCTL_GET_KEYRING_ID session
            if r2 == -1:
                blocked(name, f"add_key {errno.errorcode.get(e, e)}, keyctl {errno.errorcode.get(e2, e2)}")
            escaped(name, "keyctl succeeded")
        escaped(name, f"add_key returned {r}")

    if name == "bpf":
        expect_syscall_denied("bpf", 0, 0, 0)

    if name == "io-uring":
        expect_syscall_denied("io_uring_setup", 1, 0)

    if name == "kernel-modules":
        expect_syscall_denied("init_module", 0, 0, 0)

    print(f"unknown probe {name}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
