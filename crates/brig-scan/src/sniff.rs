//! Binary content sniffing: magic numbers of executables and archives, NUL bytes.

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    Text,
    /// Binary data that is not an executable or archive (images, fonts, UTF-16 text, ...).
    Data,
    /// An executable, object file, library or archive: the kind.
    Executable(&'static str),
}

/// How much of a file is looked at (git's own heuristic reads 8000 bytes).
pub(crate) const SNIFF_BYTES: usize = 8000;

pub(crate) fn sniff(data: &[u8]) -> Sniff {
    let head = &data[..data.len().min(SNIFF_BYTES)];
    let nul = memchr::memchr(0, head).is_some();
    let starts = |m: &[u8]| head.starts_with(m);
    let exe = if starts(b"\x7fELF") {
        Some("ELF executable or object")
    } else if starts(b"MZ") && (nul || pe_signature(data)) {
        Some("PE/COFF (Windows) executable")
    } else if starts(b"\xfe\xed\xfa\xce")
        || starts(b"\xfe\xed\xfa\xcf")
        || starts(b"\xce\xfa\xed\xfe")
        || starts(b"\xcf\xfa\xed\xfe")
    {
        Some("Mach-O executable")
    } else if starts(b"\xca\xfe\xba\xbe") {
        Some("Mach-O universal binary or Java class")
    } else if starts(b"\0asm") {
        Some("WebAssembly module")
    } else if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") || starts(b"PK\x07\x08") {
        Some("zip archive (zip, jar, apk, wheel, ...)")
    } else if starts(b"\x1f\x8b") {
        Some("gzip archive")
    } else if head.len() >= 10 && starts(b"BZh") && &head[4..10] == b"\x31\x41\x59\x26\x53\x59" {
        Some("bzip2 archive")
    } else if starts(b"\xfd7zXZ\0") {
        Some("xz archive")
    } else if starts(b"\x28\xb5\x2f\xfd") {
        Some("zstd archive")
    } else if starts(b"7z\xbc\xaf\x27\x1c") {
        Some("7-zip archive")
    } else if starts(b"Rar!\x1a\x07") {
        Some("rar archive")
    } else if starts(b"!<arch>\n") {
        Some("ar archive (static library, .deb)")
    } else if head.len() > 262 && &head[257..262] == b"ustar" {
        Some("tar archive")
    } else {
        None
    };
    match exe {
        Some(k) => Sniff::Executable(k),
        None if nul => Sniff::Data,
        None => Sniff::Text,
    }
}

fn pe_signature(data: &[u8]) -> bool {
    let Some(off) = data.get(0x3c..0x40) else {
        return false;
    };
    let off = u32::from_le_bytes([off[0], off[1], off[2], off[3]]) as usize;
    data.get(off..off.saturating_add(4)) == Some(b"PE\0\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(
            sniff(b"\x7fELF\x02\x01\x01\0\0\0"),
            Sniff::Executable("ELF executable or object")
        );
        assert!(matches!(
            sniff(b"PK\x03\x04\x14\0\0\0"),
            Sniff::Executable(_)
        ));
        assert!(matches!(sniff(b"\x1f\x8b\x08\0"), Sniff::Executable(_)));
        assert!(matches!(
            sniff(b"\xcf\xfa\xed\xfe\x07\0\0\x01"),
            Sniff::Executable(_)
        ));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Sniff::Data);
        assert_eq!(sniff(b"fn main() {}\n"), Sniff::Text);
        // A text file that happens to start with MZ is text.
        assert_eq!(sniff(b"MZ is a fine name for a text file\n"), Sniff::Text);
        assert_eq!(sniff(b""), Sniff::Text);
    }
}
