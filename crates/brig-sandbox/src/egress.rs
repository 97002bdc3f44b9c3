//! The sandbox side of the egress channel (issue 4): a sandbox's one way out.
//!
//! **Contract.** Every session has a directory on the host,
//! `<session dir>/egress/` ([`host_dir`]), bind-mounted read-only into the
//! sandbox at [`MOUNT`] (`/.brig/egress`). Whoever serves the session's egress
//! (the control plane, with `brig-proxy`) binds two unix stream sockets there
//! with [`bind_egress_socket`]:
//!
//! - [`PROXY_SOCK`] (`proxy.sock`): one stream per TCP connection made in the
//!   sandbox. Each stream starts with a PROXY protocol v1 header
//!   (`PROXY TCP4 <src> <dst> <sport> <dport>\r\n`); its destination is what
//!   the sandboxed program connected to: `127.0.0.1:3128`
//!   ([`EXPLICIT_PROXY`]) when it used `HTTP_PROXY` (explicit proxy mode),
//!   any other address for a transparently caught connection. Then the
//!   program's bytes, both ways, with half-closes passed on.
//! - [`DNS_SOCK`] (`dns.sock`): DNS-over-TCP framing (2-byte big-endian
//!   length, then the message), any number of queries per connection.
//!
//! The session is the socket a stream arrives on. Nothing in the stream
//! identifies it, and everything in it is chosen by the sandbox: any
//! process inside can connect to the sockets itself and write any header,
//! so the header's destination is a request to judge, never a fact.
//!
//! Inside, a forwarder ([`crate::forwarder`], started and restarted by
//! init) listens on `127.0.0.1:3128`, on `0.0.0.0` ports 80 and 443 and on
//! `127.0.0.53:53` (UDP and TCP) and feeds the two sockets. On runtimes whose
//! network namespace brig can enter (`native`, `oci:`), [`setup_netns`] adds
//! `local 0.0.0.0/0 dev lo` to the namespace's local table, so every IPv4
//! destination is local: a connect to any address on 80/443 reaches the
//! forwarder (whose `getsockname` is the original destination), any other
//! port is refused, UDP goes nowhere but 127.0.0.53:53, and IPv6 has no
//! route at all. Nobody bound a socket (no proxy): the forwarder's connect
//! fails and it closes the program's connection at once: fail closed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brig_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where the egress directory appears inside every sandbox (inside brig's
/// own read-only `/.brig`, so no image ever needs a mountpoint for it).
pub const MOUNT: &str = "/.brig/egress";
/// The session dir's subdirectory that is bound at [`MOUNT`].
pub const DIR: &str = "egress";
/// The TCP-stream socket (PROXY protocol v1 header, then the stream).
pub const PROXY_SOCK: &str = "proxy.sock";
/// The DNS socket (DNS-over-TCP framing).
pub const DNS_SOCK: &str = "dns.sock";
/// The generated resolv.conf, bound over the image's /etc/resolv.conf.
pub const RESOLV_FILE: &str = "resolv.conf";
/// The trust bundle (the image's CAs plus brig's egress CA, which signs the
/// certificates of the hosts the proxy intercepts to inject secrets).
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";
/// Where programs find it inside the sandbox.
pub const CA_BUNDLE_PATH: &str = "/.brig/egress/ca-bundle.pem";
/// The image file it is bound over (Debian's and Alpine's system bundle).
pub const SYSTEM_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The variables that point common TLS clients at the trust bundle.
pub fn ca_env() -> Vec<(String, String)> {
    [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CARGO_HTTP_CAINFO",
        "GIT_SSL_CAINFO",
        "CURL_CA_BUNDLE",
        "PIP_CERT",
    ]
    .iter()
    .map(|k| (k.to_string(), CA_BUNDLE_PATH.to_string()))
    .collect()
}

/// Write the trust bundle into the session's egress directory: the image's
/// system bundle (a regular file only: never a symlink out of the image)
/// followed by `extra_pem`.
pub fn write_ca_bundle(dir: &Path, rootfs: &Path, extra_pem: &str) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |what: &str, e: io::Error| Error::guard("egress", format!("{what}: {e}"));
    let mut bundle = Vec::new();
    let system = rootfs.join(SYSTEM_BUNDLE);
    if std::fs::symlink_metadata(&system).is_ok_and(|m| m.is_file()) {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&system)
            .and_then(|mut f| f.by_ref().take(16 << 20).read_to_end(&mut bundle))
            .map_err(|e| fail("reading the image's CA bundle", e))?;
        if !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
    }
    bundle.extend_from_slice(extra_pem.as_bytes());
    let path = dir.join(CA_BUNDLE_FILE);
    std::fs::write(&path, &bundle).map_err(|e| fail("writing the CA bundle", e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| fail("chmod the CA bundle", e))
}
/// The explicit-proxy address programs get in `HTTP_PROXY` and friends.
pub const EXPLICIT_PROXY: &str = "127.0.0.1:3128";
/// The sandbox's resolver (resolv.conf's nameserver).
pub const DNS_LISTEN: &str = "127.0.0.53:53";
/// Ports whose connections to any IPv4 address are caught transparently.
pub const TRANSPARENT_PORTS: [u16; 2] = [80, 443];
/// The lowest port the forwarder binds (ip_unprivileged_port_start).
const LOWEST_PORT: u16 = 53;
/// How long the host waits for the forwarder's listeners to appear.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Layer names (`Ready.layers` / session layers).
pub const LAYER_TRANSPARENT: &str = "egress:transparent";
/// Init's layer: its forwarder reported every listener before `Ready`.
pub const LAYER_FORWARDER: &str = "egress:forwarder";

/// The resolv.conf every sandbox gets.
pub const RESOLV_CONF: &str =
    "# brig: the sandbox's resolver is brig's, per session (egress channel).\n\
nameserver 127.0.0.53\noptions timeout:2 attempts:2\n";

/// The environment every command in a sandbox gets unless its request sets
/// the variable itself (none of it can widen access: the routes and the
/// forwarder are what decide, a program ignoring these is caught anyway).
pub fn exec_env() -> Vec<(String, String)> {
    let url = format!("http://{EXPLICIT_PROXY}");
    let no = "localhost,127.0.0.1,::1".to_string();
    let mut v = vec![];
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        v.push((k.to_string(), url.clone()));
        v.push((k.to_lowercase(), url.clone()));
    }
    v.push(("NO_PROXY".into(), no.clone()));
    v.push(("no_proxy".into(), no));
    v
}

/// What init gives the forwarder (JSON after `sandbox-forwarder`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwarderConfig {
    /// Path of [`PROXY_SOCK`] inside the sandbox.
    pub proxy: String,
    /// Path of [`DNS_SOCK`] inside the sandbox.
    pub dns: String,
    /// Explicit proxy listener (`127.0.0.1:3128`).
    pub explicit: String,
    /// Ports listened on at `0.0.0.0` for transparent capture (empty where
    /// the routes cannot be set: the listeners would catch nothing).
    pub transparent_ports: Vec<u16>,
    /// DNS listener (UDP and TCP), or none.
    pub dns_listen: Option<String>,
}

impl ForwarderConfig {
    /// The forwarder of a runtime whose network namespace brig sets up
    /// (`transparent`) or not.
    pub fn new(transparent: bool) -> ForwarderConfig {
        ForwarderConfig {
            proxy: format!("{MOUNT}/{PROXY_SOCK}"),
            dns: format!("{MOUNT}/{DNS_SOCK}"),
            explicit: EXPLICIT_PROXY.to_string(),
            transparent_ports: match transparent {
                true => TRANSPARENT_PORTS.to_vec(),
                false => vec![],
            },
            dns_listen: Some(DNS_LISTEN.to_string()),
        }
    }

    /// The args that start the forwarder through `/.brig`'s loader.
    pub fn args(&self) -> Vec<String> {
        let mut a = crate::initfs::init_args(serde_json::to_string(self).unwrap_or_default());
        a[4] = "sandbox-forwarder".into();
        a
    }
}

/// `<session dir>/egress`.
pub fn host_dir(session_dir: &Path) -> PathBuf {
    session_dir.join(DIR)
}

/// Make `<session dir>/egress`: owner root, group = the sandbox user's
/// host gid, mode 0751 (the sandbox may traverse and list it through its
/// read-only bind; other host users may only traverse it, which the
/// runtime's setup needs: it runs as the sandbox's mapped root, a third
/// uid, when it binds the directory), plus the generated resolv.conf
/// (0644). The sockets in it are 0660 root:<that gid>, so connecting takes
/// root or that group: the sandbox's user. `sandbox_gid` is the host gid the
/// sandbox's processes run as (native: the mapped 1 900 001 000; gVisor,
/// which checks permissions in its Sentry with the sandbox's own ids:
/// 1000, behind a session dir only root may enter).
pub fn create_dir(session_dir: &Path, sandbox_gid: u32) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = host_dir(session_dir);
    let fail =
        |what: &str, e: io::Error| Error::guard("egress", format!("{what} {}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| fail("creating", e))?;
    std::os::unix::fs::chown(&dir, Some(0), Some(sandbox_gid)).map_err(|e| fail("chown", e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o751))
        .map_err(|e| fail("chmod", e))?;
    let resolv = dir.join(RESOLV_FILE);
    std::fs::write(&resolv, RESOLV_CONF).map_err(|e| fail("writing resolv.conf in", e))?;
    std::fs::set_permissions(&resolv, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| fail("chmod resolv.conf in", e))?;
    Ok(dir)
}

/// Bind the listening socket `name` ([`PROXY_SOCK`] or [`DNS_SOCK`]) in a
/// session's egress directory `dir` (made by brig at session create).
///
/// The socket is bound under a temporary name, given owner root, the
/// directory's group (the sandbox user's host gid) and mode 0660, and only
/// then renamed into place: the sandbox never sees a half-set-up socket,
/// and a connect before this call fails (the forwarder then closes the
/// program's connection: fail closed). Who can connect: root, and the
/// sandbox's user (through the group; on `native` its uid is mapped, so the
/// group is the only way it matches). Nobody else on the host: connecting
/// needs write permission on the socket, and the directory (0751
/// root:<that gid>, under a 0711 session dir) lets others traverse it, not
/// list or write it. A stale socket of that name is replaced. Call as root
/// (brig serve is).
pub fn bind_egress_socket(dir: &Path, name: &str) -> io::Result<UnixListener> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a socket name"),
        ));
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o026 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not an egress directory (a root-owned directory no other user may write or enter)",
                dir.display()
            ),
        ));
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let done = (|| {
        std::os::unix::fs::chown(&tmp, Some(0), Some(meta.gid()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Enter the network namespace of `pid` (the sandbox's init, seen from the
/// host) on a thread of its own and make it route every IPv4 destination to
/// loopback (`local 0.0.0.0/0 dev lo table local`), let unprivileged
/// processes bind ports from 53 (`net.ipv4.ip_unprivileged_port_start`,
/// netns-scoped), and bring `lo` up if it is not. Every failure names the
/// layer `egress`.
pub fn setup_netns(pid: i32) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| {
        Error::guard(
            "egress",
            format!("opening the sandbox's network namespace: {e}"),
        )
    })?;
    let worker = std::thread::Builder::new()
        .name("brig-egress-netns".into())
        .spawn(move || -> std::result::Result<(), String> {
            // SAFETY: setns on an fd we hold; only this thread changes namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "setns into the sandbox's network namespace: {}",
                    io::Error::last_os_error()
                ));
            }
            configure_current_netns()
        })
        .map_err(|e| Error::guard("egress", format!("starting the netns thread: {e}")))?;
    match worker.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::guard("egress", e)),
        Err(_) => Err(Error::guard("egress", "the netns thread panicked")),
    }
}

/// The routes and port floor, in the calling thread's network namespace.
fn configure_current_netns() -> std::result::Result<(), String> {
    lo_up().map_err(|e| format!("bringing lo up: {e}"))?;
    add_anyip_route()
        .map_err(|e| format!("adding the route `local 0.0.0.0/0 dev lo table local`: {e}"))?;
    let path = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    std::fs::write(path, LOWEST_PORT.to_string()).map_err(|e| format!("writing {path}: {e}"))?;
    let back = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    if back.trim() != LOWEST_PORT.to_string() {
        return Err(format!("{path} reads {} after writing", back.trim()));
    }
    Ok(())
}

/// `brig doctor`'s check of the mechanism: in a throw-away network
/// namespace (a thread of its own), configure it as a sandbox's and prove a
/// connect to an outside address lands on a local `0.0.0.0:443` listener
/// with the original destination as its local address.
pub fn probe() -> std::result::Result<String, String> {
    let t = std::thread::Builder::new()
        .name("brig-egress-probe".into())
        .spawn(|| -> std::result::Result<String, String> {
            // SAFETY: only this thread's network namespace changes.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "a new network namespace: {} (needs root)",
                    io::Error::last_os_error()
                ));
            }
            configure_current_netns()?;
            let l = std::net::TcpListener::bind("0.0.0.0:443")
                .map_err(|e| format!("binding 0.0.0.0:443: {e}"))?;
            let dst: std::net::SocketAddr = "93.184.216.34:443".parse().expect("literal");
            let _c = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2))
                .map_err(|e| format!("connecting to {dst} through the route: {e}"))?;
            let (s, _) = l.accept().map_err(|e| format!("accepting: {e}"))?;
            let local = s.local_addr().map_err(|e| format!("getsockname: {e}"))?;
            if local != dst {
                return Err(format!("the accepted connection's local address is {local}, not {dst}"));
            }
            Ok(format!(
                "netns routing (local 0.0.0.0/0 dev lo over rtnetlink, ip_unprivileged_port_start {LOWEST_PORT}): a connect to {dst} reaches a local listener as {local}"
            ))
        })
        .map_err(|e| format!("starting the probe thread: {e}"))?;
    t.join()
        .map_err(|_| "the probe thread panicked".to_string())?
}

/// Whether `runsc` offers `--host-uds` (the gVisor side of the channel).
pub fn probe_runsc(runsc: &Path) -> std::result::Result<String, String> {
    let out = std::process::Command::new(runsc)
        .arg("flags")
        .output()
        .map_err(|e| format!("running {} flags: {e}", runsc.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match text.lines().any(|l| l.trim_start().starts_with("-host-uds")) {
        true => Ok(format!(
            "{} --host-uds=open: the session's sockets reach the sandbox; `brig sandbox-anyip` routes 80/443 inside (egress:transparent)",
            runsc.display()
        )),
        false => Err(format!(
            "{} has no --host-uds flag: the sandbox could not reach its egress sockets",
            runsc.display()
        )),
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ip link set lo up` through SIOCGIFFLAGS/SIOCSIFFLAGS.
fn lo_up() -> io::Result<()> {
    // SAFETY: a plain socket; ifreq is plain data the ioctls read and write.
    unsafe {
        let s = OwnedFd::from_raw_fd(cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        cvt(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr))?;
        let flags = ifr.ifr_ifru.ifru_flags;
        if flags & libc::IFF_UP as libc::c_short == 0 {
            ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
            cvt(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr))?;
        }
    }
    Ok(())
}

/// The ifindex of `lo` in the calling thread's network namespace.
fn lo_index() -> io::Result<u32> {
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}

fn push_attr(buf: &mut Vec<u8>, typ: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&typ.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A netlink create request of `typ` (`NLM_F_CREATE | NLM_F_EXCL`, acked):
/// its `struct nlmsghdr` (len, type, flags, seq, pid), the length patched
/// in by [`finish`].
fn new_request(typ: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&typ.to_ne_bytes());
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m
}

/// The message with its length in its header.
fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// The RTM_NEWROUTE message of `ip route add local 0.0.0.0/0 dev lo table local`.
fn anyip_route_message(ifindex: u32, seq: u32) -> Vec<u8> {
    let mut m = new_request(libc::RTM_NEWROUTE, seq);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    m.extend_from_slice(&[
        libc::AF_INET as u8,
        0,
        0,
        0,
        libc::RT_TABLE_LOCAL,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_HOST,
        libc::RTN_LOCAL,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut m, libc::RTA_OIF, &ifindex.to_ne_bytes());
    push_attr(
        &mut m,
        libc::RTA_TABLE,
        &(libc::RT_TABLE_LOCAL as u32).to_ne_bytes(),
    );
    finish(m)
}

/// Send the route over NETLINK_ROUTE and read the kernel's ACK.
fn add_anyip_route() -> io::Result<()> {
    netlink_call(&anyip_route_message(lo_index()?, 1), 1)
}

/// The two halves of IPv4 that [`add_sandbox_anyip_addrs`] puts on `lo`.
pub const GVISOR_ANYIP_ADDRS: [([u8; 4], u8); 2] = [([1, 0, 0, 1], 1), ([128, 0, 0, 1], 1)];

/// The RTM_NEWADDR message of `ip addr add <addr>/<prefix> dev lo`.
fn addr_message(ifindex: u32, addr: [u8; 4], prefix: u8, seq: u32) -> Vec<u8> {
    let mut m = new_request(libc::RTM_NEWADDR, seq);
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    m.extend_from_slice(&[libc::AF_INET as u8, prefix, 0, libc::RT_SCOPE_UNIVERSE]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    push_attr(&mut m, libc::IFA_LOCAL, &addr);
    push_attr(&mut m, libc::IFA_ADDRESS, &addr);
    finish(m)
}

/// gVisor's side of transparent capture, run inside the sandbox by
/// `brig sandbox-anyip` (the one process brig starts there with
/// CAP_NET_ADMIN, before the sandbox is ready): gVisor's netstack has no
/// `local` routes, but it delivers a packet to any address inside the
/// subnet of an address on its loopback interface, so two addresses on `lo`
/// whose /1 subnets cover IPv4 make every IPv4 destination local, exactly
/// what `local 0.0.0.0/0 dev lo` does on Linux: a connect to any address on
/// 80/443 reaches the forwarder, with the original destination as its local
/// address; any other port is refused.
pub fn add_sandbox_anyip_addrs() -> io::Result<()> {
    let ifindex = lo_index()?;
    for (seq, (addr, prefix)) in (1..).zip(GVISOR_ANYIP_ADDRS) {
        netlink_call(&addr_message(ifindex, addr, prefix, seq), seq)?;
    }
    Ok(())
}

/// `brig sandbox-anyip`: [`add_sandbox_anyip_addrs`], its error on stderr
/// and exit status 1 if it fails.
pub fn anyip_main() -> ! {
    match add_sandbox_anyip_addrs() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("brig sandbox-anyip: adding the catch-all addresses to lo: {e}");
            std::process::exit(1)
        }
    }
}

/// The args that run `brig sandbox-anyip` inside a sandbox through
/// `/.brig`'s loader.
pub fn anyip_args() -> Vec<String> {
    let mut a = crate::initfs::init_args(String::new());
    a[4] = "sandbox-anyip".into();
    a.truncate(5);
    a
}

/// Send one request over NETLINK_ROUTE and read the kernel's ACK for `seq`.
fn netlink_call(msg: &[u8], seq: u32) -> io::Result<()> {
    // SAFETY: a netlink socket we own; buffers are valid for their lengths.
    unsafe {
        let s = OwnedFd::from_raw_fd(cvt(libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        ))?);
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let n = libc::sendto(
            s.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        );
        if n != msg.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // A timeout by poll: gVisor's netlink sockets have no SO_RCVTIMEO.
            let mut p = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            if cvt(libc::poll(&mut p, 1, 5000))? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel within 5 s",
                ));
            }
            let n = libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let typ = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                if len < 16 || off + len > n {
                    break;
                }
                if typ == libc::NLMSG_ERROR as u16 && mseq == seq && len >= 20 {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    return match err {
                        0 => Ok(()),
                        e => Err(io::Error::from_raw_os_error(-e)),
                    };
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// The `/proc/net/{tcp,udp}` form of an IPv4 address and port
/// (`0100007F:0C38` for 127.0.0.1:3128).
fn proc_net_addr(addr: std::net::SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    )
}

/// What the forwarder of `config` listens on, as `(proc file, address, state)`.
fn expected_listeners(config: &ForwarderConfig) -> Vec<(&'static str, String, &'static str)> {
    let mut v = vec![];
    let parse = |s: &str| s.parse::<std::net::SocketAddrV4>().ok();
    if let Some(a) = parse(&config.explicit) {
        v.push(("tcp", proc_net_addr(a), "0A"));
    }
    for p in &config.transparent_ports {
        v.push((
            "tcp",
            proc_net_addr(std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::UNSPECIFIED,
                *p,
            )),
            "0A",
        ));
    }
    if let Some(a) = config.dns_listen.as_deref().and_then(parse) {
        v.push(("tcp", proc_net_addr(a), "0A"));
        v.push(("udp", proc_net_addr(a), "07"));
    }
    v
}

/// Wait until every listener of the forwarder is in the network namespace
/// of `pid` (read from the host's `/proc/<pid>/net`): the sandbox is not
/// ready before its way out is.
pub fn wait_listeners(pid: i32, config: &ForwarderConfig) -> Result<()> {
    let want = expected_listeners(config);
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        let mut missing = vec![];
        let mut tables: Vec<(&str, String)> = vec![];
        for (file, addr, state) in &want {
            if !tables.iter().any(|(f, _)| f == file) {
                let path = format!("/proc/{pid}/net/{file}");
                let t = std::fs::read_to_string(&path)
                    .map_err(|e| Error::guard("egress", format!("reading {path}: {e}")))?;
                tables.push((file, t));
            }
            let table = &tables
                .iter()
                .find(|(f, _)| f == file)
                .expect("read above")
                .1;
            let found = table.lines().skip(1).any(|l| {
                let mut f = l.split_whitespace();
                f.nth(1) == Some(addr.as_str()) && f.nth(1) == Some(*state)
            });
            if !found {
                missing.push(format!("{file} {addr}"));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::guard(
                "egress",
                format!(
                    "the sandbox's forwarder is not listening after {} s (missing {})",
                    LISTEN_TIMEOUT.as_secs(),
                    missing.join(", ")
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_layout() {
        let m = anyip_route_message(1, 7);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_NEWROUTE
        );
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 0, "dst_len 0: every destination");
        assert_eq!(m[20], libc::RT_TABLE_LOCAL);
        assert_eq!(m[23], libc::RTN_LOCAL);
    }

    #[test]
    fn addr_message_layout() {
        let m = addr_message(1, [128, 0, 0, 1], 1, 2);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_NEWADDR
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 2, "seq");
        assert_eq!((m[16], m[17]), (libc::AF_INET as u8, 1), "family, /1");
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 1, "lo");
        assert_eq!(&m[28..32], &[128, 0, 0, 1], "IFA_LOCAL");
        assert_eq!(&m[36..40], &[128, 0, 0, 1], "IFA_ADDRESS");
        // The two /1 subnets cover IPv4 and neither is loopback's.
        let covered: u64 = GVISOR_ANYIP_ADDRS
            .iter()
            .map(|(_, p)| 1u64 << (32 - *p as u32))
            .sum();
        assert_eq!(covered, 1u64 << 32);
        assert_ne!(
            GVISOR_ANYIP_ADDRS[0].0[0] >> 7,
            GVISOR_ANYIP_ADDRS[1].0[0] >> 7
        );
    }

    #[test]
    fn anyip_args_use_the_loader() {
        let a = anyip_args();
        assert_eq!(a[0], "/.brig/ld.so");
        assert_eq!(a[3], "/.brig/brig");
        assert_eq!(&a[4..], ["sandbox-anyip"]);
    }

    #[test]
    fn proc_net_form() {
        assert_eq!(
            proc_net_addr("127.0.0.1:3128".parse().unwrap()),
            "0100007F:0C38"
        );
        assert_eq!(
            proc_net_addr("127.0.0.53:53".parse().unwrap()),
            "3500007F:0035"
        );
    }

    #[test]
    fn env_cannot_widen() {
        let env = exec_env();
        assert!(env.contains(&("https_proxy".into(), "http://127.0.0.1:3128".into())));
        let no = env.iter().find(|(k, _)| k == "NO_PROXY").unwrap();
        assert_eq!(no.1, "localhost,127.0.0.1,::1");
    }

    #[test]
    fn forwarder_args_use_the_loader() {
        let a = ForwarderConfig::new(true).args();
        assert_eq!(a[0], "/.brig/ld.so");
        assert_eq!(a[3], "/.brig/brig");
        assert_eq!(a[4], "sandbox-forwarder");
        let c: ForwarderConfig = serde_json::from_str(&a[5]).unwrap();
        assert_eq!(c.transparent_ports, vec![80, 443]);
    }

    #[test]
    fn bind_refuses_a_loose_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(bind_egress_socket(d.path(), PROXY_SOCK).is_err());
        assert!(bind_egress_socket(d.path(), "../x").is_err());
    }
}
