//! The server name a ClientHello asks for, read from its raw `server_name`
//! extension (RFC 6066 §3) the way OpenSSL reads it: one entry, a host name
//! of 1 to 255 bytes without NUL.

/// What the ClientHello asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// No `server_name` extension.
    Absent,
    /// The host name, as sent (at most 255 bytes, no NUL).
    Name(Vec<u8>),
    /// An extension OpenSSL will refuse: the handshake fails anyway.
    Malformed,
}

/// Longest host name OpenSSL accepts (`TLSEXT_MAXLEN_host_name`).
const MAX_HOST_NAME: usize = 255;
/// `TLSEXT_NAMETYPE_host_name`.
const HOST_NAME: u8 = 0;

fn u16_at(data: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]) as usize)
}

/// Parses the body of a `server_name` extension.
pub fn parse_server_name(ext: &[u8]) -> ServerName {
    let parse = || -> Option<Vec<u8>> {
        let list_len = u16_at(ext, 0)?;
        let list = ext.get(2..)?;
        if list_len != list.len() || list.is_empty() || list[0] != HOST_NAME {
            return None;
        }
        // The list holds exactly one entry, as OpenSSL requires.
        let name_len = u16_at(list, 1)?;
        if 3 + name_len != list.len() {
            return None;
        }
        let name = &list[3..];
        (!name.is_empty() && name.len() <= MAX_HOST_NAME && !name.contains(&0)).then(|| name.to_vec())
    };
    match parse() {
        Some(name) => ServerName::Name(name),
        None => ServerName::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut out = (list.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&list);
        out
    }

    #[test]
    fn reads_the_first_host_name() {
        assert_eq!(
            parse_server_name(&ext(&[(0, b"c.example")])),
            ServerName::Name(b"c.example".to_vec())
        );
    }

    #[test]
    fn refuses_what_openssl_refuses() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            ext(&[(1, b"c.example")]),
            ext(&[(0, b"a.example"), (0, b"b.example")]),
            ext(&[(0, b"")]),
            ext(&[(0, b"c\0example")]),
            ext(&[(0, &[b'a'; 256])]),
            {
                let mut e = ext(&[(0, b"c.example")]);
                e[1] += 1;
                e
            },
            {
                let mut e = ext(&[(0, b"c.example")]);
                e.pop();
                e
            },
        ];
        for case in cases {
            assert_eq!(parse_server_name(&case), ServerName::Malformed, "{case:?}");
        }
    }
}
