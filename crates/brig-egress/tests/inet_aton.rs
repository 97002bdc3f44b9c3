//! Host::parse agrees with the C library's `inet_aton` on what is an IPv4
//! literal and which address it names: a program in the sandbox that hands
//! a numeric host to libc reaches exactly the address brig judged.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};

use brig_egress::{Host, HostError};

extern "C" {
    // glibc's, not exported by the libc crate.
    fn inet_aton(cp: *const libc::c_char, inp: *mut libc::in_addr) -> libc::c_int;
}

fn libc_aton(s: &str) -> Option<Ipv4Addr> {
    let c = CString::new(s).ok()?;
    let mut addr = libc::in_addr { s_addr: 0 };
    // SAFETY: c is NUL-terminated; addr is a valid out pointer.
    let ok = unsafe { inet_aton(c.as_ptr(), &mut addr) };
    (ok != 0).then(|| Ipv4Addr::from(u32::from_be(addr.s_addr)))
}

fn ours(s: &str) -> Result<Option<Ipv4Addr>, HostError> {
    match Host::parse(s)? {
        Host::Ip(IpAddr::V4(a)) => Ok(Some(a)),
        _ => Ok(None),
    }
}

#[test]
fn same_addresses_as_libc() {
    let fixed = [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "0X7F.1",
        "127.1",
        "127.0.1",
        "0x7f000001",
        "017700000001",
        "0x7f.0.0.0x1",
        "0177.0x0.0.01",
        "0",
        "00",
        "0x0.0",
        "169.254.43518",
        "0xa9fea9fe",
        "2852039166",
        "0251.0376.0251.0376",
        "10.0xff.0377.255",
        "192.168.0x1",
        "4294967295",
        "1.2.3.4",
        "0x00000000000007f.1",
        "000000000177.1",
        "1.0x00ff",
        "0.0.0.0",
    ];
    for s in fixed {
        let l = libc_aton(s);
        assert!(l.is_some(), "libc rejects {s}");
        assert_eq!(ours(s), Ok(l), "{s}");
    }
    // What both refuse: not an address. (We refuse it outright as a host;
    // libc refuses it as an address and would then try DNS, which brig's
    // resolver answers as it answers any name.)
    for s in [
        "1.2.3.4.5",
        "256.0.0.1",
        "1.256.0.1",
        "1.2.3.256",
        "1.2.65536",
        "1.16777216",
        "4294967296",
        "08.0.0.1",
        "0x7g.1",
        "1..1",
        "99999999999999999999",
        ".1.2.3",
        "0x100000000",
        "1.0x1000000",
        "09",
    ] {
        assert_eq!(libc_aton(s), None, "libc accepts {s}");
        assert!(
            ours(s).is_err() || ours(s) == Ok(None),
            "{s}: {:?}",
            ours(s)
        );
        assert_ne!(ours(s).ok().flatten().map(|_| ()), Some(()), "{s}");
    }
}

#[test]
fn random_numeric_forms_match_libc() {
    let mut x: u64 = 0xdead_beef_cafe_f00d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut checked = 0;
    for _ in 0..20_000 {
        let parts = 1 + (next() % 4) as usize;
        let mut s = String::new();
        for i in 0..parts {
            if i > 0 {
                s.push('.');
            }
            // Values around the byte and word limits, in any radix.
            let v = match next() % 5 {
                0 => next() % 256,
                1 => next() % 300,
                2 => next() % 0x1_0000_0000,
                3 => next() % 0x1_0000,
                _ => next() % 0x100_0000,
            };
            match next() % 4 {
                0 => s.push_str(&format!("{v}")),
                1 => s.push_str(&format!("0{v:o}")),
                2 => s.push_str(&format!("0x{v:x}")),
                _ => s.push_str(&format!("0X{v:X}")),
            }
        }
        let l = libc_aton(&s);
        match ours(&s) {
            Ok(Some(a)) => {
                assert_eq!(Some(a), l, "{s}");
                checked += 1;
            }
            Ok(None) => panic!("{s} parsed as a domain"),
            Err(_) => assert_eq!(l, None, "{s}: libc accepts what brig refuses"),
        }
    }
    assert!(checked > 5_000, "{checked}");
}

#[test]
fn known_differences_fail_closed() {
    // The URL standard (browsers) takes these as IPv4; glibc does not, and
    // would resolve them as names instead. brig takes them as IP literals,
    // which no rule allows, so either way they are denied.
    for (s, a) in [
        ("0x", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("127.1.", "127.0.0.1"),
    ] {
        assert_eq!(libc_aton(s), None, "{s}");
        assert_eq!(ours(s), Ok(Some(a.parse().unwrap())), "{s}");
    }
    // glibc ignores anything after whitespace; brig refuses the host.
    assert_eq!(libc_aton("127.0.0.1 evil"), Some(Ipv4Addr::LOCALHOST));
    assert!(ours("127.0.0.1 evil").is_err());
}
