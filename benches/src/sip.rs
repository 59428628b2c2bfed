//! The SIP the harness sends: clean OPTIONS and REGISTER transactions numbered by their Via
//! branch, scanner packets, and failing REGISTERs; and reading the number back from a response.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Branch prefix of clean transactions; the transaction number follows it.
const BRANCH: &[u8] = b"branch=z9hG4bKsgb";

/// A clean request, OPTIONS for even `seq` and REGISTER (no credentials) for odd, from
/// `source:port` to `target`, written into `out`.
pub fn clean_request(
    out: &mut Vec<u8>,
    seq: u64,
    source: Ipv4Addr,
    port: u16,
    target: SocketAddrV4,
) {
    out.clear();
    let method = if seq.is_multiple_of(2) {
        "OPTIONS"
    } else {
        "REGISTER"
    };
    let user = u32::from(source) & 0xffff;
    write!(
        out,
        "{method} sip:{target} SIP/2.0\r\n\
Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bKsgb{seq};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:u{user}@{target}>;tag=t{seq}\r\n\
To: <sip:u{user}@{target}>\r\n\
Call-ID: c{seq}@bench\r\n\
CSeq: 1 {method}\r\n\
Contact: <sip:u{user}@{source}:{port}>\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
    )
    .expect("writing to a Vec cannot fail");
}

/// What a sipvicious sweep sends (the micro benchmarks' scanner datagram): the edge must drop
/// it and ban its source.
pub fn scanner_packet() -> Vec<u8> {
    include_bytes!("../../crates/sip/benches/datagrams/scanner.sip").to_vec()
}

/// A REGISTER with wrong credentials: the bench PBX answers 403, a failure the edge counts.
pub fn failing_register(target: SocketAddrV4) -> Vec<u8> {
    format!(
        "REGISTER sip:{target} SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.1.0.1:5060;branch=z9hG4bK-771;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:1001@{target}>\r\n\
From: <sip:1001@{target}>;tag=77aa\r\n\
Call-ID: fail-77@bench\r\n\
CSeq: 1 REGISTER\r\n\
User-Agent: Linphone/5.2\r\n\
Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"6a7b\", uri=\"sip:{target}\", response=\"00000000000000000000000000000000\"\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The transaction number of a final response to a clean request, or `None` for anything else.
pub fn answered_transaction(response: &[u8]) -> Option<u64> {
    if !response.starts_with(b"SIP/2.0 ") || response.get(8) == Some(&b'1') {
        return None;
    }
    let at = response.windows(BRANCH.len()).position(|w| w == BRANCH)? + BRANCH.len();
    let digits = &response[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_response_names_the_transaction_of_its_request() {
        let target = "127.0.0.1:5080".parse().unwrap();
        let mut request = Vec::new();
        clean_request(&mut request, 41, Ipv4Addr::new(127, 2, 0, 9), 4000, target);
        let response = String::from_utf8(request).unwrap().replacen(
            "REGISTER sip:127.0.0.1:5080 SIP/2.0",
            "SIP/2.0 200 OK",
            1,
        );
        assert_eq!(answered_transaction(response.as_bytes()), Some(41));
        let trying = response.replacen("200 OK", "100 Trying", 1);
        assert_eq!(answered_transaction(trying.as_bytes()), None);
    }
}
