//! Addresses of `cache-udp-server`, `cache-udp-node`, `udp=` and `node=`:
//! `host:port`, `:port` (any address, receivers only), `[v6addr]:port`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use super::ConfigError;

/// Parses one address; `option` names it in errors. `any_host` allows
/// `:port` (bind on every address).
pub fn parse(option: &str, value: &str, any_host: bool) -> Result<SocketAddr, ConfigError> {
    let v = value.trim();
    let bad = |why: &str| ConfigError(format!("{option} = {value}: {why}"));
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return check_port(addr).ok_or_else(|| bad("port 0 is not an address to use"));
    }
    let (host, port) = v.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 is not an address to use"));
    }
    if host.is_empty() {
        return if any_host {
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        } else {
            Err(bad("a peer needs a host"))
        };
    }
    if host.starts_with('[') || host.contains(':') {
        return Err(bad("not a valid IPv6 address (write [addr]:port)"));
    }
    let mut found = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve {host}: {e}")))?;
    found.next().ok_or_else(|| bad(&format!("{host} has no address")))
}

fn check_port(addr: SocketAddr) -> Option<SocketAddr> {
    (addr.port() != 0).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_stock_spellings() {
        assert_eq!(
            parse("o", "127.0.0.1:4141", false).unwrap(),
            "127.0.0.1:4141".parse().unwrap()
        );
        assert_eq!(parse("o", ":7171", true).unwrap(), "0.0.0.0:7171".parse().unwrap());
        assert_eq!(parse("o", "[::1]:7171", false).unwrap(), "[::1]:7171".parse().unwrap());
        assert_eq!(parse("o", "localhost:7171", false).unwrap().port(), 7171);
        assert!(parse("o", "225.1.1.1:7171", true).unwrap().ip().is_multicast());
    }

    #[test]
    fn rejects_bad_addresses_naming_the_option() {
        for (value, why) in [
            ("127.0.0.1", "expected host:port"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:70000", "not a number from 1 to 65535"),
            (":7171", "a peer needs a host"),
            ("::1:7171", "not a valid IPv6 address"),
            ("no-such-host.invalid:7171", "cannot resolve no-such-host.invalid"),
        ] {
            let e = parse("cache-udp-node", value, false).unwrap_err();
            assert!(e.0.starts_with(&format!("cache-udp-node = {value}:")), "{}", e.0);
            assert!(e.0.contains(why), "{} does not say {why}", e.0);
        }
    }
}
