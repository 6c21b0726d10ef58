//! HTTP/1.x: the request line and the headers that name the service.
//!
//! Reads only the bytes of one packet (a request whose headers continue in
//! a later segment yields what the first segment holds). Header lines are
//! scanned with a bound, so a huge header line costs at most one pass.

/// Request methods recognised at the start of a stream.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"PATCH ",
    b"TRACE ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
    b"LOCK ",
    b"UNLOCK ",
    b"REPORT ",
    b"SEARCH ",
    b"NOTIFY ",
    b"SUBSCRIBE ",
    b"M-SEARCH ",
];

/// Most header bytes examined per packet.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// What an HTTP request reveals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method, without the trailing space.
    pub method: &'a [u8],
    /// The request target (path or absolute URI).
    pub target: &'a [u8],
    /// The Host header's value (port stripped).
    pub host: Option<&'a str>,
    /// The Content-Type header's value.
    pub content_type: Option<&'a [u8]>,
    /// The User-Agent header's value.
    pub user_agent: Option<&'a [u8]>,
}

/// Reads an HTTP/1.x request from the start of `data`; None when it is not one.
pub fn request(data: &[u8]) -> Option<Request<'_>> {
    let method = METHODS.iter().find(|m| data.starts_with(m))?;
    let data = &data[..data.len().min(MAX_HEADER_BYTES)];
    let mut lines = data.split(|&b| b == b'\n');
    let line = trim_cr(lines.next()?);
    let rest = &line[method.len()..];
    let sp = rest.iter().rposition(|&b| b == b' ')?;
    let (target, version) = (&rest[..sp], &rest[sp + 1..]);
    if !version.starts_with(b"HTTP/1.") || target.is_empty() {
        return None;
    }
    let mut req = Request {
        method: &method[..method.len() - 1],
        target,
        ..Request::default()
    };
    for line in lines {
        let line = trim_cr(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"host") {
            req.host = host_value(value);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            req.content_type = Some(value);
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            req.user_agent = Some(value);
        }
    }
    Some(req)
}

/// True when `data` starts like an HTTP/1.x status line.
pub fn is_response(data: &[u8]) -> bool {
    data.len() >= 12
        && data.starts_with(b"HTTP/1.")
        && data[8] == b' '
        && data[9..12].iter().all(u8::is_ascii_digit)
}

/// The host part of a Host header value (an `[IPv6]` literal or a name, port removed).
fn host_value(value: &[u8]) -> Option<&str> {
    let host = if value.first() == Some(&b'[') {
        &value[1..value.iter().position(|&b| b == b']')?]
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(i) => &value[..i],
            None => value,
        }
    };
    if host.iter().all(|b| b.is_ascii_hexdigit() || *b == b':') && host.contains(&b':') {
        return std::str::from_utf8(host).ok();
    }
    super::tls::host_name(host)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_request_and_headers() {
        let r = request(
            b"GET /v/a.mp4 HTTP/1.1\r\nHost: Media.Example.com:8080\r\nContent-Type: video/mp4\r\nUser-Agent: x\r\n\r\nbody",
        )
        .unwrap();
        assert_eq!(r.method, b"GET");
        assert_eq!(r.target, b"/v/a.mp4");
        assert_eq!(r.host, Some("Media.Example.com"));
        assert_eq!(r.content_type, Some(&b"video/mp4"[..]));
        assert_eq!(r.user_agent, Some(&b"x"[..]));
    }

    #[test]
    fn rejects_what_is_not_http() {
        assert_eq!(request(b"GET"), None);
        assert_eq!(request(b"GET / SMTP/1.0\r\n"), None);
        assert_eq!(request(b"HELO example\r\n"), None);
        assert!(is_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_response(b"HTTP/1.1 2x0 OK\r\n"));
    }

    #[test]
    fn huge_lines_and_odd_hosts_are_harmless() {
        let mut big = b"GET / HTTP/1.1\r\nHost: ".to_vec();
        big.resize(100_000, b'a');
        assert_eq!(request(&big).unwrap().host, None);
        let r = request(b"GET / HTTP/1.0\r\nHost: [2001:db8::1]:80\r\n\r\n").unwrap();
        assert_eq!(r.host, Some("2001:db8::1"));
        assert_eq!(
            request(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n")
                .unwrap()
                .host,
            None
        );
    }
}
